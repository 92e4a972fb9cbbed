"""Benchmarks behind `realm bench`: speed and memory (`speed`), LoRA (`lora`), speculative decoding
(`speculation`)."""
