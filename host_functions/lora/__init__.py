"""LoRA adapters: reading them (`adapter`), the model's shared pool (`pool`), and applying them
unmerged (`unmerged`: W x + s B (A x) per row) or merged (`merged`: cached copies of W + s B A)."""
