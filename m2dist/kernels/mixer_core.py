"""The M2 sequence mixer's core in Triton passes around cuFFT, forward and backward (custom ops with autograd).

Computes, from the in-projection's output z (B, L, 3H) = x1 | x2 | v and the mixer input u (B, L, H), both
token-major as the GEMMs produce and consume them, exactly what ``M2SequenceMixer`` computes between its two
projections (K = 3-tap causal depthwise short conv, keep = the padding mask or 1):

    x1, x2, v = short_conv(z)                     per channel: zc[t] = b + sum_j W[j] * z[t - 2 + j]
    w  = x1 * v * keep
    g1 = long_conv(w, k1) + D1 * w                (bidirectional or causal; filter 1)
    y  = x2 * g1 [+ long_conv(u, k2) + D2 * u]    (the residual long conv; filter 2)

returning y (B, L, H) token-major for the out-projection.

Why: in the PyTorch path each of these steps is a separate pass, most of them over (B, H, L) transposed views of
token-major tensors, and the profile of a 12-layer M2-BERT step (benchmarks/NOTES.md, attempt 5) puts ~100 of its
183 ms in that glue and in the depthwise conv. Here every pointwise step, the short conv, both skips, the
transposes and the zero padding are fused into one pass before and one pass after cuFFT, in each direction:

  forward   A: z, u -> X (S, B, H, n) fp32, channel-major, zero-padded to n      (S = 2 with the residual conv)
            cuFFT: P = fft(X as n/2 complex pairs); one Triton pass: Q = pack(unpack(P) * K); C = ifft(Q)
                   (K: the two filters' spectra; every real FFT of size n runs as a complex one of size n/2)
            B: C, z, u -> y (B, L, H), and g1 (saved for backward)
  backward  C: dy, z, u, g1 -> Gin (S, B, H, n) = [dy * x2, dy], dD1, dD2 partial sums, and X again (as A)
            cuFFT: GP, P = fft([Gin, X] as pairs); one Triton pass: dK = sum_b GX * conj(X), GP = pack(GX * conj(K)) with
                   GX, X unpacked from GP, P; dk = irfft(dK);
                   dX = ifft(GP)
            D: dX, dy, g1, z -> gz (B, L, 3H), the gradient at the short conv's outputs;
            E: gz, z -> dz (B, L, 3H) through the short conv's transpose, the conv weight/bias gradients
               (accumulated in registers over a run of token tiles), and du

Up to ``DIRECT_MAX_LEN`` the cuFFT section of each direction is replaced by batched GEMMs with each channel's
Toeplitz matrix (C = X T, dX = Gin T^T, dkappa = the diagonal sums of X^T Gin), the passes around it unchanged but
for their buffers' layout: (S, H, B, L), unpadded, instead of (S, B, H, n).

The filter gradient needs the forward's half-size spectrum P: backward recomputes it (pass C writes X beside Gin,
and one batched cuFFT call transforms both) rather than keeping (S, B, H, n) fp32 per layer alive
between the passes. Everything inside is fp32; z, u and dy may be bf16 (they are under autocast). Only the 3-tap short conv is fused (the paper's and every
preset's size); other sizes take the per-op-kernel path (``m2dist.kernels.modules.FusedMixerCore`` decides).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from m2dist.kernels._triton import HAVE_TRITON, interpreting, tl, triton
from m2dist.kernels.fft_conv import build_kappa, fft_size, split_kappa

SHORT_CONV_SIZE = 3

if HAVE_TRITON:

    @triton.jit
    def _load_tile(ptr, t, h, L, H, s_t):
        """A [BT, BH] fp32 tile of a token-major tensor (``ptr`` at its row) at positions t, zero outside [0, L)."""
        ok = (t >= 0) & (t < L)
        return tl.load(ptr + t[:, None] * s_t + h[None, :],
                       mask=ok[:, None] & (h < H)[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _short_conv(z_ptr, zb, w_ptr, b_ptr, slot, t, h, L, H, s_zt):
        """Channels [slot*H + h] of the 3-tap causal short conv at positions t, from z (token-major)."""
        c = slot * H + h
        hm = h < H
        w0 = tl.load(w_ptr + c * 3 + 0, mask=hm, other=0.0).to(tl.float32)
        w1 = tl.load(w_ptr + c * 3 + 1, mask=hm, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + c * 3 + 2, mask=hm, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + c, mask=hm, other=0.0).to(tl.float32)
        zp = z_ptr + zb + slot * H
        acc = bias[None, :] + w2[None, :] * _load_tile(zp, t, h, L, H, s_zt)
        acc += w1[None, :] * _load_tile(zp, t - 1, h, L, H, s_zt)
        acc += w0[None, :] * _load_tile(zp, t - 2, h, L, H, s_zt)
        return acc

    @triton.jit
    def _gated_w(z_ptr, zb, w_ptr, b_ptr, keep_ptr, b, t, h, L, H, s_zt, HAS_MASK: tl.constexpr):
        """w = x1 * v * keep at positions t, zero outside [0, L)."""
        x1 = _short_conv(z_ptr, zb, w_ptr, b_ptr, 0, t, h, L, H, s_zt)
        v = _short_conv(z_ptr, zb, w_ptr, b_ptr, 2, t, h, L, H, s_zt)
        inside = (t >= 0) & (t < L)
        w = tl.where(inside[:, None], x1 * v, 0.0)
        if HAS_MASK:
            w *= tl.load(keep_ptr + b * L + t, mask=inside, other=0.0).to(tl.float32)[:, None]
        return w

    @triton.jit
    def _fwd_pre(z_ptr, u_ptr, keep_ptr, cw_ptr, cb_ptr, x_ptr,
                 L, H, n, s_zb, s_zt, s_ub, s_ut, s_xs, s_xb, s_xh,
                 HAS_RES: tl.constexpr, HAS_MASK: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1) * BT + tl.arange(0, BT)  # over the buffer's length n: [L, n) is written as zeros
        h = tl.program_id(2) * BH + tl.arange(0, BH)
        store_ok = (t < n)[:, None] & (h < H)[None, :]
        dst = x_ptr + b * s_xb + h[None, :] * s_xh + t[:, None]  # channel-major, time innermost
        w = _gated_w(z_ptr, b * s_zb, cw_ptr, cb_ptr, keep_ptr, b, t, h, L, H, s_zt, HAS_MASK)
        tl.store(dst, w, mask=store_ok)
        if HAS_RES:
            u = _load_tile(u_ptr + b * s_ub, t, h, L, H, s_ut)
            tl.store(dst + s_xs, u, mask=store_ok)

    @triton.jit
    def _fwd_post(c_ptr, z_ptr, u_ptr, keep_ptr, cw_ptr, cb_ptr, d1_ptr, d2_ptr, y_ptr, g1_ptr,
                  L, H, s_zb, s_zt, s_ub, s_ut, s_cs, s_cb, s_ch,
                  HAS_RES: tl.constexpr, HAS_MASK: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1) * BT + tl.arange(0, BT)
        h = tl.program_id(2) * BH + tl.arange(0, BH)
        hm = h < H
        ok = (t < L)[:, None] & hm[None, :]
        src = c_ptr + b * s_cb + h[None, :] * s_ch + t[:, None]
        w = _gated_w(z_ptr, b * s_zb, cw_ptr, cb_ptr, keep_ptr, b, t, h, L, H, s_zt, HAS_MASK)
        d1 = tl.load(d1_ptr + h, mask=hm, other=0.0).to(tl.float32)
        g1 = tl.load(src, mask=ok, other=0.0) + d1[None, :] * w
        x2 = _short_conv(z_ptr, b * s_zb, cw_ptr, cb_ptr, 1, t, h, L, H, s_zt)
        y = x2 * g1
        if HAS_RES:
            d2 = tl.load(d2_ptr + h, mask=hm, other=0.0).to(tl.float32)
            u = _load_tile(u_ptr + b * s_ub, t, h, L, H, s_ut)
            y += tl.load(src + s_cs, mask=ok, other=0.0) + d2[None, :] * u
        tok = b * L * H + t[:, None] * H + h[None, :]  # token-major (B, L, H), contiguous
        tl.store(y_ptr + tok, y.to(y_ptr.dtype.element_ty), mask=ok)
        tl.store(g1_ptr + tok, g1.to(g1_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _bwd_pre(dy_ptr, z_ptr, u_ptr, keep_ptr, cw_ptr, cb_ptr, gin_ptr, part_ptr,
                 L, H, n, s_zb, s_zt, s_ub, s_ut, s_xs, s_xb, s_xh, x_off,
                 HAS_RES: tl.constexpr, HAS_MASK: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
        """Gin = [dy * x2, dy] channel-major and zero-padded, and x_off elements after it the forward's X = [w, u]
        (what _fwd_pre wrote, recomputed from z and u instead of saved); per-program partial sums of
        dD1 = sum dy*x2*w and dD2 = sum dy*u at part[program row, 0|1, h]."""
        b = tl.program_id(0).to(tl.int64)
        pt = tl.program_id(1)
        t = pt * BT + tl.arange(0, BT)
        h = tl.program_id(2) * BH + tl.arange(0, BH)
        hm = h < H
        store_ok = (t < n)[:, None] & hm[None, :]
        dy = _load_tile(dy_ptr + b * L * H, t, h, L, H, H)
        x2 = _short_conv(z_ptr, b * s_zb, cw_ptr, cb_ptr, 1, t, h, L, H, s_zt)
        dc1 = dy * x2  # zero outside [0, L) through dy
        dst = gin_ptr + b * s_xb + h[None, :] * s_xh + t[:, None]
        tl.store(dst, dc1, mask=store_ok)
        w = _gated_w(z_ptr, b * s_zb, cw_ptr, cb_ptr, keep_ptr, b, t, h, L, H, s_zt, HAS_MASK)
        tl.store(dst + x_off, w, mask=store_ok)
        row = (b * tl.num_programs(1) + pt) * 2 * H
        tl.store(part_ptr + row + h, tl.sum(dc1 * w, axis=0), mask=hm)
        if HAS_RES:
            tl.store(dst + s_xs, dy, mask=store_ok)
            u = _load_tile(u_ptr + b * s_ub, t, h, L, H, s_ut)
            tl.store(dst + x_off + s_xs, u, mask=store_ok)
            tl.store(part_ptr + row + H + h, tl.sum(dy * u, axis=0), mask=hm)

    @triton.jit
    def _slot_grads(dy_ptr, g1_ptr, z_ptr, keep_ptr, cw_ptr, cb_ptr, d1_ptr, b, zb, xsrc, t, h, L, H, s_xh, s_zt,
                    HAS_MASK: tl.constexpr):
        """Gradients at the short conv's outputs (positions t) for the three slots x1, x2, v."""
        hm = h < H
        inside = (t >= 0) & (t < L)
        ok = inside[:, None] & hm[None, :]
        dy = _load_tile(dy_ptr + b * L * H, t, h, L, H, H)
        d1 = tl.load(d1_ptr + h, mask=hm, other=0.0).to(tl.float32)
        x2 = _short_conv(z_ptr, zb, cw_ptr, cb_ptr, 1, t, h, L, H, s_zt)
        dw = tl.load(xsrc + h[None, :] * s_xh + t[:, None], mask=ok, other=0.0) + d1[None, :] * dy * x2
        if HAS_MASK:
            dw *= tl.load(keep_ptr + b * L + t, mask=inside, other=0.0).to(tl.float32)[:, None]
        x1 = _short_conv(z_ptr, zb, cw_ptr, cb_ptr, 0, t, h, L, H, s_zt)
        v = _short_conv(z_ptr, zb, cw_ptr, cb_ptr, 2, t, h, L, H, s_zt)
        g_x1 = tl.where(ok, dw * v, 0.0)
        g_v = tl.where(ok, dw * x1, 0.0)
        g_x2 = dy * _load_tile(g1_ptr + b * L * H, t, h, L, H, H)
        return g_x1, g_x2, g_v

    @triton.jit
    def _bwd_gates(dx_ptr, dy_ptr, g1_ptr, z_ptr, keep_ptr, cw_ptr, cb_ptr, d1_ptr, gz_ptr,
                   L, H, s_zb, s_zt, s_xb, s_xh,
                   HAS_MASK: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
        """gz (B, L, 3H) fp32 = the gradient at the short conv's outputs (x1 | x2 | v)."""
        b = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1) * BT + tl.arange(0, BT)
        h = tl.program_id(2) * BH + tl.arange(0, BH)
        ok = (t < L)[:, None] & (h < H)[None, :]
        g_a, g_b, g_c = _slot_grads(dy_ptr, g1_ptr, z_ptr, keep_ptr, cw_ptr, cb_ptr, d1_ptr, b, b * s_zb,
                                    dx_ptr + b * s_xb, t, h, L, H, s_xh, s_zt, HAS_MASK)
        dst = gz_ptr + b * L * 3 * H + t[:, None] * 3 * H + h[None, :]
        tl.store(dst, g_a, mask=ok)
        tl.store(dst + H, g_b, mask=ok)
        tl.store(dst + 2 * H, g_c, mask=ok)

    @triton.jit
    def _bwd_conv(gz_ptr, z_ptr, dx_ptr, dy_ptr, cw_ptr, d2_ptr, dz_ptr, du_ptr, part_ptr,
                  L, H3, H, s_zb, s_zt, s_xs, s_xb, s_xh, TILES,
                  HAS_RES: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
        """Over TILES consecutive token tiles of one sequence and BH of the 3H channels:
        dz[s, c] = sum_j W[c, j] * gz[s + 2 - j, c] (the short conv's transpose); the weight and bias gradients'
        partial sums sum_s gz[s] * z[s - 2 + j] and sum_s gz[s], accumulated in registers over the tiles and
        reduced once, at part[program row, j (0..2) | 3 (bias), c]; and du = dX_res + D2 * dy for c < H."""
        b = tl.program_id(0).to(tl.int64)
        pc = tl.program_id(1)
        c = tl.program_id(2) * BH + tl.arange(0, BH)
        cm = c < H3
        src = gz_ptr + b * L * H3
        zp = z_ptr + b * s_zb
        w0 = tl.load(cw_ptr + c * 3 + 0, mask=cm, other=0.0).to(tl.float32)[None, :]
        w1 = tl.load(cw_ptr + c * 3 + 1, mask=cm, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(cw_ptr + c * 3 + 2, mask=cm, other=0.0).to(tl.float32)[None, :]
        acc0 = tl.zeros([BT, BH], dtype=tl.float32)
        acc1 = tl.zeros([BT, BH], dtype=tl.float32)
        acc2 = tl.zeros([BT, BH], dtype=tl.float32)
        accb = tl.zeros([BT, BH], dtype=tl.float32)
        for i in range(TILES):
            s = (pc * TILES + i) * BT + tl.arange(0, BT)
            g = _load_tile(src, s, c, L, H3, H3)
            acc0 += g * _load_tile(zp, s - 2, c, L, H3, s_zt)
            acc1 += g * _load_tile(zp, s - 1, c, L, H3, s_zt)
            acc2 += g * _load_tile(zp, s, c, L, H3, s_zt)
            accb += g
            dz = w2 * g + w1 * _load_tile(src, s + 1, c, L, H3, H3) + w0 * _load_tile(src, s + 2, c, L, H3, H3)
            ok = (s < L)[:, None] & cm[None, :]
            tl.store(dz_ptr + b * L * H3 + s[:, None] * H3 + c[None, :], dz.to(dz_ptr.dtype.element_ty), mask=ok)
            if HAS_RES:
                if tl.program_id(2) * BH < H:
                    hm = c < H
                    okh = (s < L)[:, None] & hm[None, :]
                    dy = _load_tile(dy_ptr + b * L * H, s, c, L, H, H)
                    d2 = tl.load(d2_ptr + c, mask=hm, other=0.0).to(tl.float32)
                    du = tl.load(dx_ptr + s_xs + b * s_xb + c[None, :] * s_xh + s[:, None], mask=okh, other=0.0)
                    du += d2[None, :] * dy
                    tl.store(du_ptr + b * L * H + s[:, None] * H + c[None, :], du.to(du_ptr.dtype.element_ty),
                             mask=okh)
        row = (b * tl.num_programs(1) + pc) * 4 * H3
        tl.store(part_ptr + row + c, tl.sum(acc0, axis=0), mask=cm)
        tl.store(part_ptr + row + H3 + c, tl.sum(acc1, axis=0), mask=cm)
        tl.store(part_ptr + row + 2 * H3 + c, tl.sum(acc2, axis=0), mask=cm)
        tl.store(part_ptr + row + 3 * H3 + c, tl.sum(accb, axis=0), mask=cm)

    # Real FFTs of size n run as complex FFTs of size N2 = n/2 over the pairs (x[2m], x[2m+1]): the channel-major
    # buffers are already laid out that way (time innermost), and a complex inverse FFT, unlike a real one, does
    # not clone its input (cuFFT's c2r overwrites it). The spectral passes below (un)pack the half-size spectra for
    # each frequency pair (k, N2 - k), k = 0..N2//2, both of which one pair's math needs.

    @triton.jit
    def _cmul(ar, ai, br, bi):
        return ar * br - ai * bi, ar * bi + ai * br

    @triton.jit
    def _twiddle(k, n):
        """cos and sin of 2*pi*k/n, evaluated in float64 (libdevice's exact cos/sin; a float32 tl.cos may lower to
        an approximate instruction), once per program."""
        theta = k.to(tl.float64) * (6.283185307179586 / n.to(tl.float64))
        return tl.cos(theta).to(tl.float32), tl.sin(theta).to(tl.float32)

    @triton.jit
    def _unpack(ar, ai, cr, ci, cs, sn):
        """The real FFT X[k], X[N2-k] of x from the half-size complex FFT P of (x[2m] + i x[2m+1]), given
        a = P[k], c = P[(N2-k) % N2]: X[k] = E + W^k O and X[N2-k] = conj(E - W^k O), with E = (a + conj c)/2,
        O = (a - conj c)/(2i) and W^k = cs - i sn."""
        er = (ar + cr) * 0.5
        ei = (ai - ci) * 0.5
        o_r = (ai + ci) * 0.5
        o_i = (cr - ar) * 0.5
        tr = cs * o_r + sn * o_i
        ti = cs * o_i - sn * o_r
        return er + tr, ei + ti, er - tr, ti - ei

    @triton.jit
    def _pack(ykr, yki, yjr, yji, k, cs, sn):
        """The half-size spectrum Q whose unnormalised inverse complex FFT is y[2m] + i y[2m+1], for the Hermitian
        spectrum Y of a real y given at k and N2-k: Q[k] = A + i w D and Q[N2-k] = conj(A) + i conj(w D), with
        A = Y[k] + conj Y[N2-k], D = Y[k] - conj Y[N2-k] and w = cs + i sn. The imaginary parts at DC and at
        N2 (the pair of k = 0) are dropped, as a real inverse FFT drops them."""
        yki = tl.where(k == 0, 0.0, yki)
        yji = tl.where(k == 0, 0.0, yji)
        a_r = ykr + yjr
        a_i = yki - yji
        mr, mi = _cmul(cs, sn, ykr - yjr, yki + yji)
        return a_r - mi, a_i + mr, a_r + mi, mr - a_i

    @triton.jit
    def _pairs(k_ptr, H, n, BF: tl.constexpr):
        """This program's (slot, channel) row sh = (s, h), its frequencies k, their partners j = N2 - k and the
        partners' index jm in a half-size spectrum (N2 wraps to 0), which of them exist (ok), which partners get a
        store of their own (ok_j: k > 0, j != k), the twiddles of k and the filter spectrum K at k and j."""
        sh = tl.program_id(0).to(tl.int64)
        N2 = n // 2
        k = tl.program_id(1) * BF + tl.arange(0, BF)
        ok = k <= N2 // 2
        j = N2 - k
        jm = tl.where(k == 0, 0, j)
        cs, sn = _twiddle(k, n)
        kkr, kki, kjr, kji = _load_pair(k_ptr + sh * (N2 + 1) * 2, k, j, ok)
        return sh // H, sh % H, k, j, jm, ok, ok & (k > 0) & (j != k), cs, sn, kkr, kki, kjr, kji

    @triton.jit
    def _load_pair(ptr, k, j, ok):
        """Entries k and j of an interleaved complex row: (re k, im k, re j, im j)."""
        return (tl.load(ptr + 2 * k, mask=ok, other=0.0), tl.load(ptr + 2 * k + 1, mask=ok, other=0.0),
                tl.load(ptr + 2 * j, mask=ok, other=0.0), tl.load(ptr + 2 * j + 1, mask=ok, other=0.0))

    @triton.jit
    def _store_pair(ptr, k, j, ok, ok_j, qkr, qki, qjr, qji):
        tl.store(ptr + 2 * k, qkr, mask=ok)
        tl.store(ptr + 2 * k + 1, qki, mask=ok)
        tl.store(ptr + 2 * j, qjr, mask=ok_j)
        tl.store(ptr + 2 * j + 1, qji, mask=ok_j)

    @triton.jit
    def _spectral_fwd(p_ptr, k_ptr, q_ptr, B, H, n, BF: tl.constexpr):
        """For one (slot s, channel h) and BF frequency pairs, over the batch: Q = pack(unpack(P) * K), the
        half-size spectrum of the circular convolution. P and Q (S, B, H, N2), K (S, 1, H, N2 + 1)."""
        s, h, k, j, jm, ok, ok_j, cs, sn, kkr, kki, kjr, kji = _pairs(k_ptr, H, n, BF)
        for b in range(B):
            row = ((s * B + b) * H + h) * n  # n floats = N2 interleaved complex values
            pkr, pki, pjr, pji = _load_pair(p_ptr + row, k, jm, ok)
            xkr, xki, xjr, xji = _unpack(pkr, pki, pjr, pji, cs, sn)
            ykr, yki = _cmul(xkr, xki, kkr, kki)
            yjr, yji = _cmul(xjr, xji, kjr, kji)
            qkr, qki, qjr, qji = _pack(ykr, yki, yjr, yji, k, cs, sn)
            _store_pair(q_ptr + row, k, j, ok, ok_j, qkr, qki, qjr, qji)

    @triton.jit
    def _spectral_bwd(gp_ptr, p_ptr, k_ptr, dk_ptr, B, H, n, BF: tl.constexpr):
        """For one (slot s, channel h) and BF frequency pairs: with GX = unpack(GP) and X = unpack(P),
        dK[s, h] = sum_b GX * conj(X) (S, H, N2 + 1: the filter's gradient spectrum), and GP = pack(GX * conj(K))
        in place (the input gradient's half-size spectrum)."""
        s, h, k, j, jm, ok, ok_j, cs, sn, kkr, kki, kjr, kji = _pairs(k_ptr, H, n, BF)
        dkr = tl.zeros([BF], dtype=tl.float32)
        dki = tl.zeros([BF], dtype=tl.float32)
        djr = tl.zeros([BF], dtype=tl.float32)
        dji = tl.zeros([BF], dtype=tl.float32)
        for b in range(B):
            row = ((s * B + b) * H + h) * n
            gkr, gki, gjr, gji = _load_pair(gp_ptr + row, k, jm, ok)
            gkr, gki, gjr, gji = _unpack(gkr, gki, gjr, gji, cs, sn)
            pkr, pki, pjr, pji = _load_pair(p_ptr + row, k, jm, ok)
            xkr, xki, xjr, xji = _unpack(pkr, pki, pjr, pji, cs, sn)
            dkr += gkr * xkr + gki * xki
            dki += gki * xkr - gkr * xki
            djr += gjr * xjr + gji * xji
            dji += gji * xjr - gjr * xji
            ykr, yki = _cmul(gkr, gki, kkr, -kki)
            yjr, yji = _cmul(gjr, gji, kjr, -kji)
            qkr, qki, qjr, qji = _pack(ykr, yki, yjr, yji, k, cs, sn)
            _store_pair(gp_ptr + row, k, j, ok, ok_j, qkr, qki, qjr, qji)
        # dK has all N2 + 1 frequencies: the pair of k = 0 stores the Nyquist one at j = N2.
        _store_pair(dk_ptr + (s * H + h) * (n // 2 + 1) * 2, k, j, ok, ok & (j != k), dkr, dki, djr, dji)


def _blocks(H: int) -> tuple[int, int]:
    """(BT, BH) token x channel tiles."""
    if interpreting():
        return 16, min(16, triton.next_power_of_2(H))
    return 64, min(64, triton.next_power_of_2(H))


# Warps of the token-tile passes and of the conv-transpose pass, as measured on the H200 (benchmarks/NOTES.md,
# attempts 9-10). `python benchmarks/kernel_resources.py` gives their registers per thread without a GPU: none
# spills; 8 warps for the token-tile passes would halve the tile elements in flight per SM (1 CTA of 8 warps
# instead of 2 of 4 at their register counts), so they stay at 4 until a GPU says otherwise.
PASS_WARPS = 4
CONV_WARPS = 8
SPECTRAL_WARPS = 4


def _conv_tiles_per_program() -> int:
    """Token tiles per program of the conv-transpose pass: one weight-gradient reduction per program, after a run
    of tiles accumulated in registers."""
    return 2 if interpreting() else 8


def _pair_grid(S: int, H: int, n: int) -> tuple[tuple[int, int], int]:
    bf = 64 if interpreting() else 256
    return (S * H, triton.cdiv(n // 4 + 1, bf)), bf


def _rfft(x: torch.Tensor) -> torch.Tensor:
    """The half-size complex FFT (..., n/2) of a real x (..., n) read as pairs (x[2m], x[2m+1]); no copy."""
    return torch.fft.fft(torch.view_as_complex(x.view(*x.shape[:-1], x.shape[-1] // 2, 2)))


def _irfft(q: torch.Tensor) -> torch.Tensor:
    """The real y (..., n) whose half-size spectrum (``_pack``) is q (..., n/2), unnormalised (the 1/n is in K)."""
    return torch.view_as_real(torch.fft.ifft(q, norm="forward")).flatten(-2)


def _spectral_forward(P: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Q = pack(unpack(P) * K), the half-size spectrum of the circular convolutions."""
    S, B, H, N2 = P.shape
    Q = torch.empty_like(P)
    grid, bf = _pair_grid(S, H, 2 * N2)
    _spectral_fwd[grid](torch.view_as_real(P), torch.view_as_real(K), torch.view_as_real(Q), B, H, 2 * N2, BF=bf,
                        num_warps=SPECTRAL_WARPS)
    return Q


def _spectral_backward(GP: torch.Tensor, P: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Returns dK = sum_b GX * conj(X) (S, H, N2 + 1) and turns GP into pack(GX * conj(K)) in place, in one pass."""
    S, B, H, N2 = GP.shape
    dK = torch.empty(S, H, N2 + 1, device=GP.device, dtype=GP.dtype)
    grid, bf = _pair_grid(S, H, 2 * N2)
    _spectral_bwd[grid](torch.view_as_real(GP), torch.view_as_real(P), torch.view_as_real(K), torch.view_as_real(dK),
                        B, H, 2 * N2, BF=bf, num_warps=SPECTRAL_WARPS)
    return dK


def _kappas(filters, n: int) -> torch.Tensor:
    """(S, H, n) fp32: each filter's circular kernel [k_fwd, 0.., flip(k_rev)]."""
    return torch.stack([build_kappa(kf.float(), None if kr is None else kr.float(), n) for kf, kr in filters])


def _spectra(kappa: torch.Tensor) -> torch.Tensor:
    """(S, 1, H, n//2+1) complex64: rfft of each circular kernel, divided by n. The 1/n of the inverse FFT is folded
    in here, so the big inverse transforms run unnormalised (``norm="forward"``) instead of paying a full scaling
    pass over their (S, B, H, n) output."""
    return torch.fft.rfft(kappa, n=kappa.shape[-1], norm="forward")[:, None]


# Up to this length the long convolutions run as dense products with each channel's L x L Toeplitz matrix
# T[s, t] = kappa[(t - s) mod n] (cuBLAS batched over slot x channel, the batch as the rows) instead of through
# cuFFT. At L = 128 (M2-BERT's pretraining length) the FFT route pads to n = 2L and moves (S, B, H, n) fp32 through
# four transforms and two spectral passes each step and layer: ~1.8 of the core's ~3.5 ms per M2-BERT-80M layer
# (benchmarks/NOTES.md, attempt 21), while the products cost 2 B H L^2 FLOPs per slot and direction, which is
# small while L is. The buffers then hold only [0, L), channel-major with the batch inside each channel.
DIRECT_MAX_LEN = 256


def _direct(B: int, L: int, H: int, S: int) -> bool:
    return L <= DIRECT_MAX_LEN and S * H * B * L < 2**31  # 32-bit channel offsets in the passes


def _channel_major(S: int, B: int, H: int, n: int, direct: bool, device) -> torch.Tensor:
    """An (S, B, H, n) fp32 buffer, time innermost: (S, B, H, n) in memory for the FFT route (cuFFT's rows), a
    transposed view of (S, H, B, n) for the direct one (each channel's B x n block is one matrix of a batched GEMM)."""
    if direct:
        return torch.empty(S, H, B, n, device=device, dtype=torch.float32).transpose(1, 2)
    return torch.empty(S, B, H, n, device=device, dtype=torch.float32)


def _as_matrices(x: torch.Tensor) -> torch.Tensor:
    """(S*H, B, n), no copy, of a direct-route buffer from ``_channel_major``."""
    S, B, H, n = x.shape
    return x.transpose(1, 2).reshape(S * H, B, n)


def _toeplitz(kappa: torch.Tensor, L: int) -> torch.Tensor:
    """(S*H, L, L): T[s, t] = kappa[(t - s) mod n], so that x @ T is the circular convolution at t < L."""
    S, H, n = kappa.shape
    i = torch.arange(L, device=kappa.device)
    return kappa.reshape(S * H, n)[:, (i[None, :] - i[:, None]) % n]


@contextlib.contextmanager
def _products_at(dtype: torch.dtype):
    """The direct route's GEMMs in TF32 when the core's inputs are half precision (autocast): their operands, the
    gated signal and the gradients, then carry bf16's 8 bits of precision already, which TF32's 10 do not lower.
    In full precision when z is fp32."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype in (torch.bfloat16, torch.float16)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _diagonal_sums(M: torch.Tensor, n: int) -> torch.Tensor:
    """(R, n): out[d mod n] = sum over t - s = d of M[:, s, t], for M (R, L, L) and n >= 2L - 1 -- the gradient of
    ``_toeplitz``'s kappa. Each row is shifted by its index through a strided view of the zero-padded, row-flipped
    M (row i of the view starts 2L - 1 elements after row i - 1 of a 2L-wide buffer), so a plain sum over the rows
    gives every diagonal at once."""
    R, L, _ = M.shape
    P = torch.nn.functional.pad(M.flip(1), (0, L))
    D = P.as_strided((R, L, 2 * L - 1), (2 * L * L, 2 * L - 1, 1), P.storage_offset()).sum(1)  # d + L - 1
    out = M.new_zeros(R, n)
    out[:, :L] = D[:, L - 1:]
    out[:, n - L + 1:] = D[:, :L - 1]
    return out


def _geometry(z, u, keep, conv_w):
    """What every launch needs: sizes, tiles, the conv weight as (3H, 3), and stand-ins for absent pointers (never
    read: the kernels' HAS_RES / HAS_MASK flags are off then). ``n`` is the circular convolution's length, ``nb``
    the buffers' (n on the FFT route, L on the direct one)."""
    B, L, H3 = z.shape
    H = H3 // 3
    has_res = u is not None
    S = 2 if has_res else 1
    BT, BH = _blocks(H)
    keep_t = keep.contiguous() if keep is not None else z
    u_t, (s_ub, s_ut) = (u, u.stride()[:2]) if has_res else (z, (0, 0))
    n = fft_size(L)
    direct = _direct(B, L, H, S)
    return (B, L, H3, H, has_res, S, n, direct, L if direct else n, BT, BH, conv_w.reshape(H3, 3).contiguous(),
            keep_t, u_t, s_ub, s_ut)


# The forward and backward are registered as custom ops (opaque to torch.compile, which then compiles everything
# around them as one graph instead of breaking the layer at a Python autograd.Function), wired together with
# register_autograd. Optional inputs are real Optionals; a missing gradient comes back as an empty tensor.
@torch.library.custom_op("m2dist::mixer_core", mutates_args=())
def _mixer_core_op(z: torch.Tensor, u: Optional[torch.Tensor], conv_w: torch.Tensor, conv_b: torch.Tensor,
                   k1f: torch.Tensor, k1r: Optional[torch.Tensor], d1: torch.Tensor, k2f: Optional[torch.Tensor],
                   k2r: Optional[torch.Tensor], d2: Optional[torch.Tensor], keep: Optional[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y (B, L, H) and what backward needs besides the inputs: g1 (B, L, H) and the filters: their spectrum
    K (S, 1, H, n//2+1) on the FFT route, their circular kernels kappa (S, H, n) on the direct one."""
    z = z.contiguous()
    B, L, H3, H, has_res, S, n, direct, nb, BT, BH, cw, keep_t, u_t, s_ub, s_ut = _geometry(z, u, keep, conv_w)
    with torch.autocast(z.device.type, enabled=False):
        kappa = _kappas([(k1f, k1r)] + ([(k2f, k2r)] if has_res else []), n)
        X = _channel_major(S, B, H, nb, direct, z.device)
        grid = (B, triton.cdiv(nb, BT), triton.cdiv(H, BH))
        _fwd_pre[grid](z, u_t, keep_t, cw, conv_b, X, L, H, nb, z.stride(0), z.stride(1), s_ub, s_ut,
                       *X.stride()[:3], HAS_RES=has_res, HAS_MASK=keep is not None, BT=BT, BH=BH,
                       num_warps=PASS_WARPS)
        if direct:
            filt = kappa
            with _products_at(z.dtype):
                C = torch.bmm(_as_matrices(X), _toeplitz(kappa, L)).view(S, H, B, L).transpose(1, 2)
        else:
            filt = _spectra(kappa)
            P = _rfft(X)
            del X
            C = _irfft(_spectral_forward(P, filt))
            del P
        y = torch.empty(B, L, H, device=z.device, dtype=z.dtype)
        g1 = torch.empty_like(y)
        grid = (B, triton.cdiv(L, BT), triton.cdiv(H, BH))
        _fwd_post[grid](C, z, u_t, keep_t, cw, conv_b, d1, d2 if has_res else d1, y, g1,
                        L, H, z.stride(0), z.stride(1), s_ub, s_ut, *C.stride()[:3],
                        HAS_RES=has_res, HAS_MASK=keep is not None, BT=BT, BH=BH, num_warps=PASS_WARPS)
    return y, g1, filt


@_mixer_core_op.register_fake
def _(z, u, conv_w, conv_b, k1f, k1r, d1, k2f, k2r, d2, keep):
    B, L, H3 = z.shape
    S, n = (2 if u is not None else 1), fft_size(L)
    y = z.new_empty(B, L, H3 // 3)
    if _direct(B, L, H3 // 3, S):
        return y, torch.empty_like(y), torch.empty(S, H3 // 3, n, device=z.device, dtype=torch.float32)
    return y, torch.empty_like(y), torch.empty(S, 1, H3 // 3, n // 2 + 1, device=z.device, dtype=torch.complex64)


@torch.library.custom_op("m2dist::mixer_core_backward", mutates_args=())
def _mixer_core_backward_op(dy: torch.Tensor, z: torch.Tensor, u: Optional[torch.Tensor], keep: Optional[torch.Tensor],
                            conv_w: torch.Tensor, conv_b: torch.Tensor, d1: torch.Tensor, d2: Optional[torch.Tensor],
                            g1: torch.Tensor, filt: torch.Tensor) -> list[torch.Tensor]:
    """[dz, du, dconv_w, dconv_b, dkappa (S, H, n), dD (2, H)]; du is empty without the residual conv."""
    dy = dy.contiguous()
    B, L, H3, H, has_res, S, n, direct, nb, BT, BH, cw, keep_t, u_t, s_ub, s_ut = _geometry(z, u, keep, conv_w)
    with torch.autocast(z.device.type, enabled=False):
        # Gin's S slots, then the forward's X recomputed (S slots): one pass writes both, one batched FFT
        # transforms both. Saving the forward's spectrum P instead would keep (S, B, H, n) fp32 per layer alive
        # from forward to backward (~268 MB per M2-GPT-360M layer at L=2048, B=16).
        gin_x = _channel_major(2 * S, B, H, nb, direct, z.device)
        nt = triton.cdiv(nb, BT)
        part_d = torch.empty(B * nt, 2, H, device=z.device, dtype=torch.float32)
        _bwd_pre[(B, nt, triton.cdiv(H, BH))](
            dy, z, u_t, keep_t, cw, conv_b, gin_x, part_d, L, H, nb, z.stride(0), z.stride(1), s_ub, s_ut,
            *gin_x.stride()[:3], S * gin_x.stride(0), HAS_RES=has_res, HAS_MASK=keep is not None,
            BT=BT, BH=BH, num_warps=PASS_WARPS)
        dD = part_d.sum(0)
        if direct:
            G, X = _as_matrices(gin_x[:S]), _as_matrices(gin_x[S:])
            T = _toeplitz(filt, L)
            with _products_at(z.dtype):
                dX = torch.bmm(G, T.transpose(1, 2)).view(S, H, B, L).transpose(1, 2)
                dkappa = _diagonal_sums(torch.bmm(X.transpose(1, 2), G), n).view(S, H, n)
            del G, X, T, gin_x
        else:
            spectra = _rfft(gin_x)
            del gin_x
            GP, P = spectra[:S], spectra[S:]
            dkappa = torch.fft.irfft(_spectral_backward(GP, P, filt), n=n)  # (S, H, n): the filters' gradients
            dX = _irfft(GP)
            del GP, P, spectra
        dz = torch.empty_like(z)
        du = torch.empty(B, L, H, device=z.device, dtype=u.dtype) if has_res else z.new_empty(0)
        ntl = triton.cdiv(L, BT)
        gz = torch.empty(B, L, H3, device=z.device, dtype=torch.float32)
        s_xs, s_xb, s_xh = dX.stride()[:3]
        _bwd_gates[(B, ntl, triton.cdiv(H, BH))](
            dX, dy, g1, z, keep_t, cw, conv_b, d1, gz, L, H, z.stride(0), z.stride(1), s_xb, s_xh,
            HAS_MASK=keep is not None, BT=BT, BH=BH, num_warps=PASS_WARPS)
        # A short sequence has fewer token tiles than a program would walk: every tile past its end would still
        # run (masked) through the loop.
        tiles = min(_conv_tiles_per_program(), ntl)
        chunks = triton.cdiv(ntl, tiles)
        part_w = torch.empty(B * chunks, 4, H3, device=z.device, dtype=torch.float32)
        _bwd_conv[(B, chunks, triton.cdiv(H3, BH))](
            gz, z, dX, dy, cw, d2 if has_res else d1, dz, du if has_res else dz, part_w, L, H3, H,
            z.stride(0), z.stride(1), s_xs, s_xb, s_xh, tiles, HAS_RES=has_res, BT=BT, BH=BH,
            num_warps=CONV_WARPS)
        del gz
        pw = part_w.sum(0)  # (3 taps + bias, 3H)
    dconv_w = pw[:3].t().contiguous().reshape(conv_w.shape).to(conv_w.dtype)
    dconv_b = pw[3].clone().to(conv_b.dtype)  # custom-op outputs may not alias each other
    return [dz, du, dconv_w, dconv_b, dkappa, dD]


@_mixer_core_backward_op.register_fake
def _(dy, z, u, keep, conv_w, conv_b, d1, d2, g1, filt):
    B, L, H3 = z.shape
    H, S, n = H3 // 3, filt.shape[0], fft_size(L)
    du = torch.empty(B, L, H, device=z.device, dtype=u.dtype) if u is not None else z.new_empty(0)
    f32 = dict(device=z.device, dtype=torch.float32)
    return [torch.empty_like(z), du, torch.empty_like(conv_w), torch.empty_like(conv_b), torch.empty(S, H, n, **f32),
            torch.empty(2, H, **f32)]


def _setup_context(ctx, inputs, output):
    z, u, conv_w, conv_b, k1f, k1r, d1, k2f, k2r, d2, keep = inputs
    _, g1, filt = output
    ctx.save_for_backward(z, u, keep, conv_w, conv_b, d1, d2, g1, filt)
    ctx.meta = (k1r is not None, k1f.dtype, k2r is not None, None if k2f is None else k2f.dtype)


def _backward(ctx, dy, _dg1, _dK):
    z, u, keep, conv_w, conv_b, d1, d2, g1, filt = ctx.saved_tensors
    bidir1, k1_dtype, bidir2, k2_dtype = ctx.meta
    dz, du, dconv_w, dconv_b, dkappa, dD = _mixer_core_backward_op(dy, z, u, keep, conv_w, conv_b, d1, d2, g1, filt)
    L = z.shape[1]

    def filter_grads(s, bidir, dtype):
        kf, kr = split_kappa(dkappa[s], L, bidir)
        return kf.to(dtype), (None if kr is None else kr.to(dtype))

    dk1f, dk1r = filter_grads(0, bidir1, k1_dtype)
    dk2f = dk2r = dd2 = None
    if u is not None:
        dk2f, dk2r = filter_grads(1, bidir2, k2_dtype)
        dd2 = dD[1].to(d2.dtype)
    return (dz, du if u is not None else None, dconv_w, dconv_b, dk1f, dk1r, dD[0].to(d1.dtype), dk2f, dk2r, dd2,
            None)


_mixer_core_op.register_autograd(_backward, setup_context=_setup_context)


def fused_mixer_core(z: torch.Tensor, u: Optional[torch.Tensor], conv_w: torch.Tensor, conv_b: torch.Tensor,
                   k1f: torch.Tensor, k1r: Optional[torch.Tensor], d1: torch.Tensor,
                   k2f: Optional[torch.Tensor] = None, k2r: Optional[torch.Tensor] = None,
                   d2: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y (B, L, H) = the mixer core between in_proj and out_proj; see the module docstring. z (B, L, 3H); u (B, L, H)
    with unit channel stride, or None (no residual long conv); conv_w (3H, 1, 3); conv_b (3H,); k1f, k1r, d1
    (filter 1, k1r None when causal); k2f, k2r, d2 (filter 2, with u); keep (B, L), broadcastable to it, or None.
    y is in z's dtype (bf16 under autocast, what out_proj takes), where the PyTorch path promotes to u's fp32."""
    if u is None:
        k2f = k2r = d2 = None
    elif u.stride(-1) != 1:
        raise ValueError(f"fused_mixer_core: u needs a unit channel stride, got strides {tuple(u.stride())}")
    # The kernels index every per-channel vector and the mask densely, and z (saved for backward) token-major.
    z, conv_b, d1 = z.contiguous(), conv_b.contiguous(), d1.contiguous()
    d2 = None if d2 is None else d2.contiguous()
    if keep is not None:
        keep = keep.expand(z.shape[0], z.shape[1]).contiguous()
    return _mixer_core_op(z, u, conv_w, conv_b, k1f, k1r, d1, k2f, k2r, d2, keep)[0]


def supports(z: torch.Tensor, u: Optional[torch.Tensor], conv_w: torch.Tensor) -> bool:
    """Shapes and dtypes the kernels take: the 3-tap conv, fp32/bf16/fp16, offsets within one sequence that fit in
    32 bits (L x 3H of z, L x u's token stride, H x n of the padded channel-major buffers; batch offsets are 64-bit)
    and fewer than 65536 token tiles in the grid; a residual input with unit channel stride and no float64 (which
    stays on the exact PyTorch path). Anything else takes the PyTorch path."""
    B, L, H3 = z.shape
    n = fft_size(L)
    floats = (torch.float32, torch.bfloat16, torch.float16)
    if u is not None and (u.stride(-1) != 1 or u.dtype not in floats):
        return False
    return (conv_w.shape[-1] == SHORT_CONV_SIZE and z.dtype in floats
            and max(L * H3, (H3 // 3) * n, 0 if u is None else L * u.stride(1)) < 2**31
            and triton.cdiv(n, _blocks(H3 // 3)[0]) < 65536)
