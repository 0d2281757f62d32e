"""Kernel tests run Triton through its CPU interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before
anything imports triton). On the GPU machine, `M2DIST_GPU_TESTS=1 python -m pytest tests/kernels -m gpu` compiles the
kernels instead.
"""
