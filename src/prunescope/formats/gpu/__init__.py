"""GPU paths of the formats: Triton kernels that read a format's own storage on the device.

Each runs where Triton compiles (a CUDA GPU) and, for tests, on the CPU under Triton's interpreter
(`TRITON_INTERPRET=1`). Triton is imported on first use only: without it the formats keep their pure-torch
device path (`formats.expand`).
"""
