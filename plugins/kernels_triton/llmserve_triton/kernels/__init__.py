"""Triton kernels and their thin torch wrappers.

Each module holds ``@triton.jit`` kernels, a wrapper that takes torch tensors and launches
them, the function that picks a launch configuration (block sizes, warps), and
``aot_specs(dtype)``: the configurations the wrapper can choose, written as
``triton.compile`` inputs so the ahead-of-time compile tests build exactly what ships.
"""
