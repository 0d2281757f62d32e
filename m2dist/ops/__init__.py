"""Reference operators that every mixer and kernel path goes through."""

from m2dist.ops.long_conv import long_conv
from m2dist.ops.mixer_core import mixer_core

__all__ = ["long_conv", "mixer_core"]
