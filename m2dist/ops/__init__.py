"""Reference operators that every mixer and kernel path goes through."""

from m2dist.ops.long_conv import long_conv

__all__ = ["long_conv"]
