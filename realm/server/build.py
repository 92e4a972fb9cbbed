"""What `realm serve` builds from its flags: one Server, in this process or in each Ray replica.

`ServeOptions` is small and picklable, so `realm serve --replicas N` hands the same options to every
replica (realm/cluster) that the single-process server uses here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from realm.server.app import Server, ServerConfig
from realm.server.model_catalog import ModelCatalog
from realm.server.model_set import ModelSet, serving
from realm.tenants import TenantRegistry

Preload = Callable[[ModelSet, ModelCatalog], None]  # loads the default model before the server starts


@dataclass(frozen=True)
class ServeOptions:
    """The server's flags: its models, its limits and its registry."""

    catalog: ModelCatalog = field(default_factory=ModelCatalog)
    config: ServerConfig = field(default_factory=ServerConfig)
    registry_url: str | None = None  # None: $REALM_REGISTRY_URL, else SQLite under REALM_HOME

    def pinned(self) -> ServeOptions:
        """These options with every model named by id and absolute path (the default model assembled,
        --models-dir listed now), so every replica on every machine serves the same ids from the same
        paths. RealmError as ModelCatalog.sources raises."""
        named = tuple(f"{s.id}={s.path.resolve()}" for s in self.catalog.sources())
        return dataclasses.replace(self, catalog=dataclasses.replace(self.catalog, models=named, models_dir=None))


def checked_models(catalog: ModelCatalog) -> ModelSet:
    """The ModelSet of `catalog`; RealmError for bad flags, ModelTooLarge for a model whose file alone
    is over --model-memory (checked before anything loads)."""
    models = serving(catalog)
    models.check_sizes()
    return models


def preload_default(models: ModelSet, catalog: ModelCatalog) -> None:
    """Load the default model now unless it comes from --models-dir, so that a bad --model or default
    model stops the start (a bad file in --models-dir fails its own requests only). Raises what loading
    raises."""
    if catalog.models or catalog.models_dir is None:
        models.preload(models.sources[0].id)


def build_server(options: ServeOptions, models: ModelSet | None = None, preload: Preload = preload_default) -> Server:
    """The Server the options describe (its models checked_models' unless given), its registry checked and
    its default model loaded by `preload`. Raises RealmError for a bad or unreachable registry and for a
    model or chat template that cannot be loaded."""
    models = models or checked_models(options.catalog)
    registry = TenantRegistry(options.registry_url)
    registry.check()
    preload(models, options.catalog)
    return Server(models, options.config, registry)
