"""Constants that Python and the WGSL kernels must agree on are held to each other here (as
test_abi.py holds guest/realm.h to the ABI): a kernel sized for 512 while the host allows more would
read and write past its workgroup arrays."""

from __future__ import annotations

import re
from pathlib import Path

from host_functions.backends.wgpu import ops as wgpu_ops
from host_functions.backends.wgpu import weight_kernels as kernels

SHADERS = Path(__file__).resolve().parent.parent / "shaders"


def wgsl_constants(name: str) -> dict[str, int]:
    """Every `const NAME: u32 = Nu;` of a shader file."""
    return {m[0]: int(m[1]) for m in re.findall(r"^const (\w+): u32 = (\d+)u;", (SHADERS / name).read_text(), re.M)}


def test_max_head_dim_is_the_same_in_python_and_in_the_rope_and_attention_kernels():
    for shader in ("rope.wgsl", "attention.wgsl"):
        assert wgsl_constants(shader)["MAX_HEAD_DIM"] == wgpu_ops.MAX_HEAD_DIM, shader


def test_matmul_register_tile_bounds_are_the_same_in_python_and_wgsl():
    consts = wgsl_constants("matmul.wgsl")
    assert (consts["MAX_ROWS"], consts["MAX_TILE_T"]) == (kernels.MAX_ROWS, kernels.MAX_TILE_T)


def test_elementwise_op_codes_are_the_ones_python_selects():
    consts = wgsl_constants("elementwise.wgsl")
    names = {"add": "OP_ADD", "scale": "OP_SCALE", "silu": "OP_SILU_GATE", "gelu": "OP_GELU_GATE",
             "f16": "OP_ROUND_F16", "bf16": "OP_ROUND_BF16", "bias": "OP_ADD_BIAS"}
    assert {op: consts[names[op]] for op in wgpu_ops._ELEMENTWISE_OPS} == wgpu_ops._ELEMENTWISE_OPS
    assert len([c for c in consts if c.startswith("OP_")]) == len(wgpu_ops._ELEMENTWISE_OPS)


def test_a_dequantized_chunk_holds_chunk_weights():
    """weights.wgsl's Chunk (array<vec4<f32>, N>) is the CHUNK weights dequant16 returns."""
    n_vec4 = int(re.search(r"alias Chunk = array<vec4<f32>, (\d+)>;", (SHADERS / "weights.wgsl").read_text())[1])
    assert 4 * n_vec4 == kernels.CHUNK
