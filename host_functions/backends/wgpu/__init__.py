"""The wgpu backend: the device and buffers (`context`), the kernels over quantized weights
(`weight_kernels`), the other ops (`ops`) and the forward pass built from them (`backend`)."""
