"""What `realm serve` builds from its flags: one Server, in this process or in each Ray replica.

`ServeOptions` is small and picklable, so `realm serve --replicas N` hands the same options to every
replica (realm/cluster) that the single-process server uses here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from host_functions.engine.model import Model
from realm.chat import load_chat_template
from realm.models import load_model
from realm.server.app import Server, ServerConfig

Loader = Callable[[str | None, str, bool], Model]  # (model path, backend, prefix cache) -> the model


@dataclass(frozen=True)
class ServeOptions:
    """The server's flags: the model, its backend and chat template, and the server's limits."""

    model_path: str | None = None  # None: $REALM_MODEL, else the bundled Gemma
    backend: str = "auto"
    chat_template: str | None = None  # a built-in name or a Jinja file; None: the model's own
    config: ServerConfig = field(default_factory=ServerConfig)
    prefix_cache: bool = True


def load_quietly(model_path: str | None, backend: str, prefix_cache: bool) -> Model:
    """The shared model for (path, backend), its KV pool reusing cached prefixes if `prefix_cache`."""
    model = load_model(model_path, backend)
    if model.backend.kv_pool is not None:
        model.backend.kv_pool.set_prefix_cache(prefix_cache)
    return model


def build_server(options: ServeOptions, load: Loader = load_quietly) -> Server:
    """The Server the options describe, its model loaded by `load`. Raises RealmError for a model
    or chat template that cannot be loaded."""
    model = load(options.model_path, options.backend, options.prefix_cache)
    template = load_chat_template(model.tokenizer, model.config.arch, options.chat_template)
    return Server(model, template, options.config)
