"""The guest ABI (`abi/`) and the engine it drives, layered bottom-up:

    errors, settings   the error taxonomy and every REALM_* environment variable
    formats/           GGUF files and ggml's quantized block formats
    arch/              ModelConfig and the per-architecture structure table
    kv/                the paged KV pool and each sequence's block table
    tokenizer/         SentencePiece and byte-level BPE tokenizers
    lora/              adapters: files, the shared pool, unmerged and merged application
    native/            the cpu backend's C kernels, built on first use
    backends/          the forward pass: numpy (the reference), cpu, wgpu
    engine/            Model and Sequence, step rules, scheduler, sampling, speculation, generation
    abi/               the host functions a guest calls, over the engine
    kernel_tests/      kernel cases against NumPy references (`realm kernels test`)

Each layer imports only layers listed above it; nothing here imports `realm`.
"""
