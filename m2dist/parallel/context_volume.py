"""Communication-volume model of the three context-parallel methods for the M2 sequence mixer (issue 16).

Bytes one CP rank sends per mixer layer, forward and backward, for B sequences of L tokens split into CP consecutive
blocks, H channels (per tensor-parallel rank), activations of ``dtype_bytes`` on the wire. The derivation, the
schedules assumed for (b) and (c) and the table at M2-GPT-360M sizes are in ``docs/context_parallel.md``; method
(a) is the one ``context_conv.py`` implements, and its counted bytes are tested to equal this model exactly.

    python -m m2dist.parallel.context_volume    # prints the doc's table
"""

from __future__ import annotations

from typing import Optional

METHODS = {"a": "all-to-all (sequence <-> channel shards)", "b": "distributed four-step (Monarch) FFT",
           "c": "point-to-point blocked convolution"}


def _rank_volume(method: str, batch: int, length: int, hidden: int, cp: int, e: int, n_conv: int,
                 bidirectional: bool, k: int, fft_bytes: int, rank: int) -> tuple[int, int]:
    lc = length // cp
    block = batch * lc * hidden * e  # one H-channel activation block of this rank's tokens
    # The short conv's halo (all three methods keep the sequence-sharded short conv): the last k-1 tokens of z (3H
    # channels) to the next rank forward, their gradient back to the previous rank backward.
    halo = (k - 1) * batch * 3 * hidden * e
    fwd = halo if rank + 1 < cp else 0
    bwd = halo if rank > 0 else 0
    if method == "a":
        # Per long conv: its input to the channel layout and its output back, each an all-to-all in which a rank
        # keeps 1/CP of its block; backward, the same two all-to-alls of the gradients.
        a2a = batch * lc * (hidden // cp) * (cp - 1) * e
        fwd += 2 * n_conv * a2a
        bwd += 2 * n_conv * a2a
    elif method == "b":
        # Block-distributed input: the four-step FFT's first stage runs over the distributed (high) index digit, so
        # a forward FFT is all-to-all (real input) -> stage 1 -> twiddle -> all-to-all (spectrum) -> stage 2, and
        # the inverse FFT mirrors it: 4 all-to-alls per conv, two on the real signal and two on its half spectrum
        # (L complex values per channel of the 2L-padded FFT, in fp32: the FFT must not run in bf16, spec §7.1).
        # Backward (input gradient through the conjugate spectrum): the same 4. The filter's spectrum at this rank's
        # frequencies comes from the same distributed FFT of its taps (all H channels, this rank's block of the
        # kernel: L real taps causal, 2L bidirectional), no batch dimension; backward, its adjoint.
        f_num, f_den = cp - 1, cp
        real = block
        spectrum = batch * lc * hidden * 2 * fft_bytes
        taps = hidden * (2 if bidirectional else 1) * lc * fft_bytes
        taps_spectrum = hidden * lc * 2 * fft_bytes
        per_pass = n_conv * (2 * real + 2 * spectrum + taps + taps_spectrum) * f_num // f_den
        fwd += per_pass
        bwd += per_pass
    elif method == "c":
        # Exact blocked convolution: every output block needs every earlier (causal) or every (bidirectional) input
        # block, passed around a ring. Forward: bidirectional, a ring all-gather (CP-1 blocks per rank); causal, a
        # one-way chain in which rank r forwards blocks 0..r to rank r+1. Backward: the partial input gradients go
        # back the same way and are summed on the way (a ring reduce-scatter, CP-1 blocks; causal, rank r returns
        # r blocks to rank r-1). Filter gradients are local (a rank holds the pairs it convolved).
        if bidirectional:
            fwd += n_conv * (cp - 1) * block
            bwd += n_conv * (cp - 1) * block
        else:
            fwd += n_conv * (rank + 1) * block if rank + 1 < cp else 0
            bwd += n_conv * rank * block
    else:
        raise ValueError(f"context_comm_volume: method must be one of {sorted(METHODS)}, got {method!r}")
    return fwd, bwd


def context_comm_volume(method: str, batch: int, length: int, hidden: int, cp: int, dtype_bytes: int = 2, *,
                        residual_long_conv: bool = False, bidirectional: bool = False, short_conv_size: int = 3,
                        fft_bytes: int = 4, rank: Optional[int] = None) -> dict:
    """Bytes sent per mixer layer by CP rank ``rank`` (None: the busiest rank) for ``method`` in a/b/c:
    ``{"forward", "backward", "total", "rank"}``. ``hidden`` is the mixer width per tensor-parallel rank,
    ``dtype_bytes`` the activations' element size (2 for bf16), ``fft_bytes`` the FFT's real element size (4)."""
    if length % cp:
        raise ValueError(f"sequence length {length} is not divisible by parallel.context={cp}")
    if hidden % cp:
        raise ValueError(f"hidden size {hidden} (per tensor-parallel rank) is not divisible by parallel.context={cp}")
    n_conv = 2 if residual_long_conv else 1
    ranks = range(cp) if rank is None else [rank]
    best = None
    for r in ranks:
        fwd, bwd = _rank_volume(method, batch, length, hidden, cp, dtype_bytes, n_conv, bidirectional,
                                short_conv_size, fft_bytes, r)
        if best is None or fwd + bwd > best["total"]:
            best = {"forward": fwd, "backward": bwd, "total": fwd + bwd, "rank": r}
    return best


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def volume_table(hidden: int = 1024, layers: int = 40, batch: int = 1, dtype_bytes: int = 2,
                 residual_long_conv: bool = False, bidirectional: bool = False,
                 lengths=(1 << 16, 1 << 17, 1 << 18, 1 << 20), cps=(2, 4, 8)) -> str:
    """Markdown table: MiB per rank per layer (fwd+bwd, busiest rank) for each method, and (a) for the whole model;
    defaults are M2-GPT-360M's (H=1024, 40 layers, causal, no residual long conv), one sequence per rank group."""
    rows = ["| L | CP | (a) all-to-all | (b) 4-step FFT | (c) p2p blocks | (b)/(a) | (c)/(a) | (a) x layers |",
            "|---|---|---|---|---|---|---|---|"]
    for length in lengths:
        for cp in cps:
            vol = {m: context_comm_volume(m, batch, length, hidden, cp, dtype_bytes,
                                          residual_long_conv=residual_long_conv, bidirectional=bidirectional)["total"]
                   for m in "abc"}
            name = f"{length // 1024}K" if length < (1 << 20) else f"{length >> 20}M"
            model_gib = vol["a"] * layers / 2**30
            rows.append(f"| {name} | {cp} | {_mib(vol['a'])} | {_mib(vol['b'])} | {_mib(vol['c'])} | "
                        f"{vol['b'] / vol['a']:.1f} | {vol['c'] / vol['a']:.1f} | {model_gib:,.2f} GiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    print("M2-GPT-360M (H=1024, 40 layers, causal, no residual long conv), B=1, bf16; MiB per rank per layer:\n")
    print(volume_table())
    print("\nM2-BERT-style mixer at H=1024 (bidirectional, residual long conv), B=1, bf16; MiB per rank per layer:\n")
    print(volume_table(residual_long_conv=True, bidirectional=True))
