"""Triton kernels with autograd for the M2 hot spots, chosen on GPU by `m2dist.kernels.dispatch`.

* `block_diagonal.block_diagonal_matmul`: order-1 Monarch (block-diagonal) layer, forward + both gradients; a
  persistent Triton kernel or cuBLAS strided-batched, whichever is faster per shape.
* `monarch_matmul.monarch_matmul`: order-2 Monarch layer (two block-diagonal factors, two permutations), forward +
  all gradients, on the same strided batched-matmul kernel with the permutations read and written as strided views.
* `fft_conv.fft_long_conv`: the long convolution (causal / bidirectional, skip) on cuFFT with the pointwise stages
  fused, forward + backward. The default long-conv path on GPU.
* `monarch_fft_conv.monarch_long_conv`: the long convolution with the FFT as a Monarch product in one Triton program
  per row (FlashFFTConv-style); correct on CPU, opt-in (`M2DIST_LONGCONV=monarch`) until measured on a GPU.

Import the submodules directly; this package imports nothing heavy so that `import m2dist` stays cheap.
"""
