"""Kernel cases checked against NumPy references, for tests and `realm kernels test`.

`harness` is the registry and the runner, `inputs` makes random weights in every format and holds
the tolerances, `op_reference` the float64 references; the case tables (`wgpu_matmul_cases`,
`wgpu_op_cases`, `cpu_cases`) register their cases when imported, which importing this package does.
Nothing in production imports this package.
"""

from host_functions.kernel_tests import cpu_cases, wgpu_matmul_cases, wgpu_op_cases  # noqa: F401  registers the cases
