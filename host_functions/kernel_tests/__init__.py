"""Kernel cases checked against NumPy references, for tests and `realm kernels test`: the harness
(`harness`), the WGSL op cases (`wgpu_op_cases`), the native cpu cases (`cpu_cases`) and the
references they share (`op_reference`). Nothing in production imports this package."""
