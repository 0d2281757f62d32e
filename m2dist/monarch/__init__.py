"""Monarch layers: block-diagonal (order 1) and two-factor Monarch (order 2) linear maps."""

from m2dist.monarch.blockdiag import BlockDiagonalLinear
from m2dist.monarch.monarch_linear import MonarchLinear

__all__ = ["BlockDiagonalLinear", "MonarchLinear"]
