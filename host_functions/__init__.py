"""The guest ABI and the compute behind it: GGUF models, quant formats, tokenizer, backends."""
