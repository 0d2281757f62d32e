"""Triton kernels with autograd for the M2 hot spots, and the converter that swaps them into a model.

``m2dist.kernels.accelerate(model)`` (``convert.py``) is the one place that decides which kernels a model runs: it
swaps the models' parameter-free compute modules for the kernel-backed ones in ``modules.py``, which fall back to the
reference where a kernel does not apply. The kernels:

* `block_diagonal.block_diagonal_matmul`: order-1 Monarch (block-diagonal) layer, forward + both gradients; a
  persistent Triton kernel or cuBLAS strided-batched, whichever is faster per shape.
* `monarch_matmul.monarch_matmul`: order-2 Monarch layer (two block-diagonal factors, two permutations), forward +
  all gradients, on the same strided batched-matmul kernel with the permutations read and written as strided views.
* `glu.gelu_glu`: the Monarch MLP's GELU gate in one pass each way.
* `mlp_recompute`: the Monarch MLP (or its gate and second layer) as one op whose backward recomputes the
  intermediates instead of keeping them (opt-in, `M2DIST_MLP_RECOMPUTE=glu|mlp`).
* `layer_norm.layer_norm`: LayerNorm with fp32 statistics and its output in the dtype the next matmul reads, one pass
  each way (the norms that feed matmuls).
* `mixer_core.fused_mixer_core`: the whole sequence-mixer core (short conv, gates, long convs, skips) as Triton passes
  around cuFFT.
* `fft_conv.fft_long_conv`: the long convolution (causal / bidirectional, skip) on cuFFT with the pointwise stages
  fused, forward + backward. The long-conv path where the whole mixer core is not fused.
* `monarch_fft_conv.monarch_long_conv`: the long convolution with the FFT as a Monarch product in one Triton program
  per row (FlashFFTConv-style); correct on CPU, opt-in (`M2DIST_LONGCONV=monarch`) until measured on a GPU.

Importing this package does not import triton (the kernel files do, and are imported on first use on a GPU).
"""

from m2dist.kernels.convert import KernelChoice, accelerate

__all__ = ["KernelChoice", "accelerate"]
