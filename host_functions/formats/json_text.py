"""JSON from untrusted text (adapter configs and headers, guests' parameters, batch lines), bounded in
depth: Python's parser recurses once per level and everything that walks the value afterwards
(validation, repr in an error, copying) recurses too, so a value nested thousands deep would raise
RecursionError somewhere far from the input. Here it is a ValueError saying so, at the parse.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # objects and arrays within each other; every format Realm reads nests a few levels


def loads(text: str | bytes, max_depth: int = MAX_DEPTH, **hooks: Any) -> Any:
    """json.loads(text, **hooks), refused past `max_depth` levels of nesting.

    Raises ValueError (json.JSONDecodeError, UnicodeDecodeError, or one naming the depth)."""
    try:
        value = json.loads(text, **hooks)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    if depth(value) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return value


def depth(value: Any) -> int:
    """How many objects and arrays deep `value` nests (0 for a scalar), walked with its own stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
