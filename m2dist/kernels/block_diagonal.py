"""Block-diagonal matmul (order-1 Monarch), forward and both gradients, in one autograd.Function.

``y = x @ BD(W)^T + b`` with ``W`` of shape ``(nb, q, p)``: input channels split into ``nb`` chunks of ``p``,
chunk ``g`` multiplied by ``W[g]^T``, outputs concatenated (``nb*q`` channels). This is
``m2dist.monarch.BlockDiagonalLinear`` with ``nb | in_features`` and ``nb | out_features``.

The PyTorch way is a ``bmm`` on a ``(nb, M, p)`` view whose output is then transposed back to ``(M, nb, q)``: an
extra pass over the largest tensor of a product that is memory-bound at BERT shapes (p = 192, q = 1536). Here every
product is one strided batched matmul that reads and writes its operands in place, so all three land directly in
their final layout:

* forward ``y_g = x_g @ W_g^T``       A = x viewed (nb, M, p), B = W^T, C = y viewed (nb, M, q)
* input grad ``dx_g = dy_g @ W_g``    the same with B = W (a transposed view, no copy)
* weight grad ``dW_g = dy_g^T @ x_g`` (q x M) @ (M x p): a long reduction with a tiny output, split over ``split_k``
  programs writing fp32 partials that are summed afterwards (deterministic, unlike atomics; ~1% of the bytes).

Two backends run that strided product: the persistent Triton kernel below, and cuBLAS's strided-batched GEMM (torch
hands it a strided ``out`` with one unit-stride dimension without copying). Measured on an H200
(benchmarks/NOTES.md): at p = 192 the Triton kernel is latency-bound per tile (30-34% of a dense GEMM of the same
shape), cuBLAS reaches 50-63% in most cases but loses on the 3072->768 weight gradient; ``_launch`` therefore times
both once per shape and layout and keeps the faster (``M2DIST_BLOCKDIAG=auto``, the default).

The same kernel also takes operands with no unit stride inside the matrix (layout "none"): the permuted views of
the order-2 Monarch product (m2dist/kernels/monarch_matmul.py), which cuBLAS cannot take, so those always run on
Triton.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from m2dist.kernels._triton import HAVE_TRITON, interpreting, needs_upcast, tl, triton

if HAVE_TRITON:

    @triton.jit
    def _batched_matmul_kernel(
        a_ptr, b_ptr, c_ptr, bias_ptr,
        M, N, K, K_PER_SPLIT, G, S,
        s_ag, s_am, s_ak,
        s_bg, s_bk, s_bn,
        s_cs, s_cg, s_cm, s_cn,
        HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        A_UNIT: tl.constexpr, B_UNIT: tl.constexpr, C_UNIT: tl.constexpr, G_INNER: tl.constexpr,
        FLATTEN: tl.constexpr, CTAS: tl.constexpr,  # CTAS only sizes the grid (see _launch)
    ):
        """C[s, g] = A[g, :, ks] @ B[g, ks, :] (+ bias[g*N:(g+1)*N]) for the K-slice ks of split s.

        Persistent: a fixed number of programs walk the S*G*tiles output tiles in order. Why: at BERT shapes the
        reduction is only p = 192 long (3 steps of BLOCK_K), so a one-tile-per-program kernel spends most of its
        time in the prologue (first loads) and the epilogue (a 64 KB store) with nothing to overlap them with.
        With ``flatten`` the compiler pipelines the tile loop and the K loop as one, so the next tile's loads are
        in flight while this tile is stored.
        The *_UNIT flags say which tile dimension of each operand has stride 1 (A: "k" or "m", B: "n" or "k", C: "n"
        or "m"; known at compile time, so loads and stores along it are 16-byte vectors, which a runtime stride of 1
        would not be), or "none": both tile strides are runtime values. "none" is for the Monarch permutations, whose
        views have the block index g as their unit-stride dimension; there ``G_INNER`` makes g the fastest-varying
        tile index, so the G programs that share every 32-byte sector of such an operand run at the same time and
        fetch it from HBM once (with g outermost, each sector would be fetched up to G times, 1/G of it used).
        """
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        tiles_per_mat = num_pid_m * num_pid_n
        num_tiles = tiles_per_mat * G * S
        k_tiles = tl.cdiv(K_PER_SPLIT, BLOCK_K)
        offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=FLATTEN):
            # Consecutive tiles share a block g (and a split); inside one block, GROUP_M consecutive M-tiles reuse
            # the same weight tiles while they sit in L2, so each weight block is read from HBM about once.
            # G_INNER puts g innermost instead (see above): the weights are then all read at once, and still fit L2.
            if G_INNER:
                g = (tile % G).to(tl.int64)
                t = (tile // G) % tiles_per_mat
                split = tile // (G * tiles_per_mat)
            else:
                mat = tile // tiles_per_mat
                t = tile % tiles_per_mat
                g = (mat % G).to(tl.int64)
                split = mat // G
            num_pid_in_group = GROUP_M * num_pid_n
            first_pid_m = (t // num_pid_in_group) * GROUP_M
            group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
            pid_m = first_pid_m + ((t % num_pid_in_group) % group_size_m)
            pid_n = (t % num_pid_in_group) // group_size_m

            # int64 offsets: M * row stride passes 2^31 at a few hundred thousand tokens.
            offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
            offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            k_start = split * K_PER_SPLIT
            k_end = tl.minimum(K, k_start + K_PER_SPLIT)
            a_base = a_ptr + g * s_ag
            b_base = b_ptr + g * s_bg
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_tiles):
                kk = k_start + ki * BLOCK_K + offs_k
                k_ok = kk < k_end
                if A_UNIT == "k":
                    a_off = offs_m[:, None] * s_am + kk[None, :]
                elif A_UNIT == "m":
                    a_off = offs_m[:, None] + kk[None, :] * s_ak
                else:
                    a_off = offs_m[:, None] * s_am + kk[None, :] * s_ak
                if B_UNIT == "n":
                    b_off = kk[:, None] * s_bk + offs_n[None, :]
                elif B_UNIT == "k":
                    b_off = kk[:, None] + offs_n[None, :] * s_bn
                else:
                    b_off = kk[:, None] * s_bk + offs_n[None, :] * s_bn
                a = tl.load(a_base + a_off, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
                b = tl.load(b_base + b_off, mask=k_ok[:, None] & (offs_n[None, :] < N), other=0.0)
                if UPCAST:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc)

            if HAS_BIAS:
                bias = tl.load(bias_ptr + g * N + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
                acc += bias[None, :]
            if C_UNIT == "n":
                c_off = offs_m[:, None] * s_cm + offs_n[None, :]
            elif C_UNIT == "m":
                c_off = offs_m[:, None] + offs_n[None, :] * s_cn
            else:
                c_off = offs_m[:, None] * s_cm + offs_n[None, :] * s_cn
            c_ptrs = c_ptr + split * s_cs + g * s_cg + c_off
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    # Hopper configs. K per block is small (p = 192 at BERT-base); wide N tiles amortise the A tile; CTAS is how
    # many persistent programs share one SM (smaller tiles: more of them, to overlap one's store with another's
    # loads). FLATTEN=False is kept as a fallback config. Autotuned once per (shape, layout) on the GPU.
    _GPU_CONFIGS = [
        triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, FLATTEN=fl, CTAS=ctas),
                      num_stages=s, num_warps=w)
        for bm, bn, bk, s, w, ctas, fl in [
            (128, 256, 64, 3, 8, 1, True), (128, 128, 64, 3, 8, 1, True), (128, 128, 64, 3, 4, 2, True),
            (128, 256, 64, 2, 8, 1, True), (64, 256, 64, 3, 4, 2, True), (128, 64, 64, 4, 4, 2, True),
            (256, 128, 64, 3, 8, 1, True), (128, 128, 64, 2, 4, 3, True), (128, 256, 64, 3, 8, 1, False),
            (128, 128, 64, 4, 4, 2, False),
        ]
    ]
    # M2DIST_TUNE_CONFIGS=n keeps only the first n configs (the GPU tests use this to save compile time).
    _tuned_kernel = triton.autotune(
        _GPU_CONFIGS[: int(os.environ.get("M2DIST_TUNE_CONFIGS", len(_GPU_CONFIGS)))],
        key=["M", "N", "K", "K_PER_SPLIT", "G", "S", "s_am", "s_ak", "s_bk", "s_bn", "s_cm",
             "A_UNIT", "B_UNIT", "C_UNIT", "G_INNER"],
    )(_batched_matmul_kernel)


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


_CHOICE: dict = {}  # (shapes, strides, dtypes) -> "triton" | "cublas", filled by the first call under "auto"


def _unit(t: torch.Tensor, row: str, col: str) -> str:
    """Which tile dimension (the last two) of ``t`` has stride 1: ``col``, ``row``, or "none"."""
    if t.stride(-1) == 1:
        return col
    return row if t.stride(-2) == 1 else "none"


def _cublas_can_take(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> bool:
    """cuBLAS needs a unit stride inside every matrix; given a view without one (the Monarch permutations), torch
    would copy it, and for ``out`` copy the result back."""
    return "none" not in (_unit(a, "m", "k"), _unit(b, "k", "n"), _unit(c, "m", "n"))


def _launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
    """c[s, g] = a[g, :, slice_s] @ b[g, slice_s, :] (+ bias[g*N:(g+1)*N], contiguous). a (G,M,K), b (G,K,N),
    c (S,G,M,N): any strides.

    Backend, ``M2DIST_BLOCKDIAG=auto|triton|cublas`` (default auto): on a GPU, "auto" times both once per
    (shape, layout) and keeps the faster; see benchmarks/NOTES.md for which wins where. Operands without a unit
    stride inside the matrix (``_cublas_can_take``) always take Triton.
    """
    if not a.is_cuda or not _cublas_can_take(a, b, c):
        return _launch_triton(a, b, c, bias)
    choice = os.environ.get("M2DIST_BLOCKDIAG", "auto")
    if choice == "auto":
        key = (a.shape, a.stride(), b.shape, b.stride(), c.shape, c.stride(), a.dtype, c.dtype, bias is None)
        if key not in _CHOICE:
            _CHOICE[key] = _fastest(a, b, c, bias)
        choice = _CHOICE[key]
    (_launch_cublas if choice == "cublas" else _launch_triton)(a, b, c, bias)


def cuda_ms(fn, reps: int = 3) -> float:
    """Milliseconds per call of ``fn()`` on CUDA events, after one warm-up call (which also runs Triton's
    autotuning): how the timed backend choices here and in ``monarch_matmul`` compare their candidates."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _fastest(a, b, c, bias) -> str:
    times = {name: cuda_ms(lambda fn=fn: fn(a, b, c, bias))
             for name, fn in (("triton", _launch_triton), ("cublas", _launch_cublas))}
    return min(times, key=times.get)


def _launch_cublas(a, b, c, bias) -> None:
    """cuBLAS strided-batched GEMM with leading dimensions nb*p / nb*q: torch passes a strided ``out`` with one
    unit-stride dimension straight to cuBLAS, so it too writes the final layout without a copy."""
    G, M, N, S = a.shape[0], a.shape[1], b.shape[2], c.shape[0]
    if S == 1 and c.dtype == a.dtype:
        torch.bmm(a, b, out=c[0])
    else:  # the fp32 weight-gradient buffer: cuBLAS reduces over all of K itself
        c[0].copy_(torch.bmm(a, b))
        c[1:].zero_()
    if bias is not None:
        c[0] += bias.view(G, 1, N)


def _launch_triton(a, b, c, bias) -> None:
    G, M, K = a.shape
    N = b.shape[2]
    S = c.shape[0]
    # Split boundaries on a multiple of every config's BLOCK_K; the interpreter's 16 makes its splits real (with 256,
    # a test-sized K would put all of it in the first split) and skips the wasted masked steps.
    k_align = 16 if interpreting() else 256
    k_per_split = K if S == 1 else triton.cdiv(triton.cdiv(K, S), k_align) * k_align
    args = (a, b, c, bias if bias is not None else c, M, N, K, k_per_split, G, S,
            *a.stride(), *b.stride(), *c.stride())
    units = dict(A_UNIT=_unit(a, "m", "k"), B_UNIT=_unit(b, "k", "n"), C_UNIT=_unit(c, "m", "n"))
    units["G_INNER"] = G > 1 and "none" in units.values()

    def tiles(bm, bn):
        return triton.cdiv(M, bm) * triton.cdiv(N, bn) * G * S

    if interpreting():
        # Tiny fixed tiles (the interpreter runs one program at a time and accepts dots below 16); fewer programs
        # than tiles, so the persistent loop really loops.
        grid = (max(1, tiles(16, 16) // 3),)
        _batched_matmul_kernel[grid](*args, HAS_BIAS=bias is not None, UPCAST=needs_upcast(a, b), **units,
                                     BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, FLATTEN=False, CTAS=1)
    else:
        sms = _num_sms(a.device)
        grid = lambda meta: (min(tiles(meta["BLOCK_M"], meta["BLOCK_N"]), sms * meta["CTAS"]),)  # noqa: E731
        _tuned_kernel[grid](*args, HAS_BIAS=bias is not None, UPCAST=False, **units)


def _apply(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y (M, nb*q) = x (M, nb*p) @ BD(w)^T, with w (nb, q, p) in any strides (a transposed view included)."""
    M = x.shape[0]
    nb, q, p = w.shape
    y = torch.empty(M, nb * q, device=x.device, dtype=x.dtype)
    a = x.view(M, nb, p).transpose(0, 1)  # (nb, M, p)
    c = y.view(M, nb, q).transpose(0, 1).unsqueeze(0)  # (1, nb, M, q)
    _launch(a, w.transpose(1, 2), c, bias)
    return y


def _weight_grad(gy: torch.Tensor, x: torch.Tensor, nb: int) -> torch.Tensor:
    """dW (nb, q, p) = dy_g^T @ x_g, reduced over all M rows; fp32 result."""
    M = x.shape[0]
    q, p = gy.shape[1] // nb, x.shape[1] // nb
    return _row_reduction(gy.view(M, nb, q).permute(1, 2, 0), x.view(M, nb, p).transpose(0, 1))


def _row_reduction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (G, Q, M) @ b (G, M, P) -> fp32 (G, Q, P), any strides: the weight-gradient shape, a long reduction over
    the M rows into a small output, split over M (split-K) for parallelism."""
    G, q, M = a.shape
    p = b.shape[2]
    if interpreting():
        splits = 2 if M >= 32 else 1  # exercise the split path in tests
    else:
        # about two waves of output tiles on the chip, each split at least 1024 rows long
        tiles = G * triton.cdiv(q, 128) * triton.cdiv(p, 128)
        sms = _num_sms(a.device)
        splits = max(1, min(triton.cdiv(2 * sms, tiles), M // 1024, 32))
    part = torch.empty(splits, G, q, p, device=a.device, dtype=torch.float32)
    _launch(a, b, part)
    return part[0] if splits == 1 else part.sum(0)


# Registered as custom ops (with autograd) so that torch.compile treats them as opaque calls: traced through, the
# backend choice below (timed with CUDA events on first use) was lost and compiled stacks ran the slower backend.
@torch.library.custom_op("m2dist::block_diagonal", mutates_args=())
def _block_diagonal_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x (M, nb*p), weight (nb, q, p), bias (nb*q,) or None -> (M, nb*q); dtypes of x and weight must agree."""
    return _apply(x, weight, bias)


@_block_diagonal_op.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0] * weight.shape[1])


@torch.library.custom_op("m2dist::block_diagonal_backward", mutates_args=())
def _block_diagonal_backward_op(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                bias: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """[dx, dweight, dbias (empty without a bias)]."""
    gy = gy.contiguous()
    gx = _apply(gy, weight.transpose(1, 2), None)
    gw = _weight_grad(gy, x, weight.shape[0]).to(weight.dtype)
    gb = gy.sum(0, dtype=torch.float32).to(bias.dtype) if bias is not None else gy.new_empty(0)
    return [gx, gw, gb]


@_block_diagonal_backward_op.register_fake
def _(gy, x, weight, bias):
    # Contiguous, as the real op's outputs (whatever the strides of x and of a transposed weight view)
    return [x.new_empty(x.shape), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape) if bias is not None else gy.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _backward(ctx, gy):
    x, weight, bias = ctx.saved_tensors
    gx, gw, gb = _block_diagonal_backward_op(gy, x, weight, bias)
    return gx, gw, (gb if bias is not None else None)


_block_diagonal_op.register_autograd(_backward, setup_context=_setup_context)


def block_diagonal_matmul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Apply the block-diagonal layer to ``x`` (..., nb*p). Inputs and weight share one dtype (cast before)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1 or x2.stride(0) != x2.shape[1]:
        x2 = x2.contiguous()
    y = _block_diagonal_op(x2, weight, bias)
    return y.view(*lead, y.shape[-1])
