"""What a tenant's LoRA adapter alias stands for, as a request is given it (the Session's bindings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterBinding:
    """A tenant's adapter under one alias: its file (GGUF) or folder (PEFT), default scale, and whether
    sequences run it merged into a cached copy of the weights (docs/lora.md) instead of unmerged."""

    path: str
    scale: float = 1.0
    merged: bool = False
