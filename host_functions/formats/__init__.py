"""File formats: GGUF files (`gguf_file`) and ggml's quantized block formats (`quants`)."""
