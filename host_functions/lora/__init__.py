"""LoRA adapters, below the backends (this package never imports them).

- `adapter`: what an adapter is (LoraPair, LoraAdapter) and `load_adapter`, which checks one against
  a model's structure (arch.layout: which weights an adapter may change, their shapes);
- `adapter_files`: the two file formats, llama.cpp's GGUF adapters and PEFT folders;
- `lru`: a reference-counted LRU cache within a byte budget, behind both caches below;
- `pool`: the adapters loaded for a model, shared by every tenant (`AdapterPool`);
- `unmerged`: W x + s B (A x) per run of rows, the adapter's pairs fused like the products they adapt;
- `merged`: cached copies of W + s B A per (adapter, scale) (`MergedLoraCache`), built by a backend
  through the `MergeHost` protocol.
"""
