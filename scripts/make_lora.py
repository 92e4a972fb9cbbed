"""Write a random LoRA adapter for a model in llama.cpp's GGUF adapter format (for benchmarks and examples).

    python scripts/make_lora.py OUT.gguf [--model M.gguf] [--rank 16] [--alpha 32] [--seed 0]

The pairs target every weight the architecture's LoRA targets name (arch.layout: for llama, gemma3,
qwen2 and qwen3 attn_q/k/v/output and ffn_gate/up/down; for phi3 the fused attn_qkv and ffn_up whole,
attn_output and ffn_down) in every layer, shaped from the model's own config. A is
uniform in +-1/sqrt(n_in) (Kaiming-style, like PEFT's init) and B is small random normal
(PEFT starts B at zero, which would make the adapter a no-op), so the adapter changes the logits a
little, as a trained one does. The same seed always writes the same file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host_functions.arch.config import ModelConfig  # noqa: E402
from host_functions.formats.gguf_file import GGUFFile  # noqa: E402


def make_adapter(model_path: Path, out: Path, rank: int, alpha: float, seed: int, b_std: float) -> int:
    """Write the adapter; returns its number of pairs."""
    config = ModelConfig.from_gguf(GGUFFile(model_path))
    expected = config.expected_tensors()
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(out), config.arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    n_pairs = 0
    for layer in range(config.n_layers):
        for target in config.layout.lora_targets:
            name = f"blk.{layer}.{target}.weight"
            n_out, n_in = expected[name]
            a = rng.uniform(-1, 1, (rank, n_in)).astype(np.float32) / np.float32(np.sqrt(n_in))
            b = (rng.standard_normal((n_out, rank)) * b_std).astype(np.float32)
            writer.add_tensor(f"{name}.lora_a", a)
            writer.add_tensor(f"{name}.lora_b", b)
            n_pairs += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return n_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="base model (default: the bundled Gemma 3 270M)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--b-std", type=float, default=0.005, help="standard deviation of B's entries")
    args = parser.parse_args()
    if args.model is None:
        from realm.models import default_model_path

        args.model = default_model_path()
    n = make_adapter(args.model, args.out, args.rank, args.alpha, args.seed, args.b_std)
    print(f"wrote {args.out}: {n} rank-{args.rank} pairs for {args.model.name}")


if __name__ == "__main__":
    main()
