"""KV memory: the per-model paged pool (`pool`) and each sequence's table of blocks in it (`block_table`)."""
