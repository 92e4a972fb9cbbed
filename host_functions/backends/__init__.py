"""Compute backends: the forward pass of one model, one batched step at a time.

`base` defines the interface (Backend, StepItem); `numpy_backend` is the float32 reference,
`cpu_backend` runs the native kernels (host_functions.native) on the quantized blocks, and
`wgpu/` runs WGSL kernels (shaders/) on a GPU. The engine picks one (engine.model.create_backend).
"""
