"""What the Monarch layers share: size checks, initialisation (spec §1.1, §1.2), bias and repr."""

from __future__ import annotations

import math

import torch
from torch import nn

INIT_STYLES = ("paper", "variance_preserving")


def check_init_style(init: str) -> None:
    if init not in INIT_STYLES:
        raise ValueError(f"init must be one of {INIT_STYLES}, got {init!r}")


@torch.no_grad()
def init_block_weight_(weight: torch.Tensor, fan_in: int, init: str) -> None:
    """Initialise a stack of blocks whose inputs have size ``fan_in``.

    "paper": the public code draws kaiming_uniform(a=sqrt(5)) on the dense matrix and scales by
    sqrt(nblocks), which nets out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the *block* fan-in.
    That gives each output variance var(x)/3.
    "variance_preserving": N(0, 1/fan_in), so each output has the variance of one input feature.
    """
    if init == "paper":
        bound = 1.0 / math.sqrt(fan_in)
        weight.uniform_(-bound, bound)
    else:
        weight.normal_(0.0, 1.0 / math.sqrt(fan_in))


@torch.no_grad()
def init_bias_(bias: torch.Tensor, init: str) -> None:
    """"paper" keeps the public code's quirk of using the bias length (n_out) as the fan-in."""
    if init == "paper":
        bound = 1.0 / math.sqrt(bias.shape[-1])
        bias.uniform_(-bound, bound)
    else:
        bias.zero_()


def check_divisible(name: str, in_features: int, out_features: int, nblocks: int) -> None:
    if nblocks < 1:
        raise ValueError(f"{name}: nblocks must be >= 1, got {nblocks}")
    bad = [f"{label}={size}" for label, size in (("in_features", in_features), ("out_features", out_features))
           if size % nblocks]
    if bad:
        raise ValueError(
            f"{name}: {' and '.join(bad)} not divisible by nblocks={nblocks}; "
            "block-diagonal layers need both sizes to be multiples of the number of blocks"
        )


class StructuredLinear(nn.Module):
    """Base of the Monarch layers: validated sizes, init style and the optional bias (out_features,).
    Subclasses create their weights, then call ``reset_parameters``."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool, init: str):
        super().__init__()
        check_divisible(type(self).__name__, in_features, out_features, nblocks)
        check_init_style(init)
        self.in_features, self.out_features, self.nblocks, self.init = in_features, out_features, nblocks, init
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nblocks={self.nblocks}, bias={self.bias is not None}")
