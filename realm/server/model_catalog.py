"""Which models a server serves, from `realm serve`'s flags: --model [NAME=]PATH (repeatable),
--models-dir DIR, --model-memory SIZE (docs/serve.md, "Many models").

`ModelCatalog` is what the flags said, a frozen, picklable value (a replica elsewhere builds its
server from it); `ModelCatalog.sources()` turns it into model ids and files on this machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from host_functions.errors import RealmError
from realm.models import default_model_path
from realm.tenants import MODEL_ID_PATTERN, MODEL_ID_RULE

log = logging.getLogger("realm.server")
# The smallest KV pool a tight --model-memory squeezes a model's to (some hundred tokens of a small model).
MIN_KV_BYTES = 4 << 20


@dataclass(frozen=True)
class ModelSource:
    """One model a server may serve: its id (what requests name) and its GGUF file."""

    id: str
    path: Path


@dataclass(frozen=True)
class ModelCatalog:
    """The models and their memory, as `realm serve`'s flags gave them."""

    models: tuple[str, ...] = ()  # --model values, [NAME=]PATH, in order: the first is the default model
    models_dir: Path | None = None  # every *.gguf there
    memory: int | None = None  # --model-memory: what loaded models may hold together; None: no bound
    kv_memory: int | None = None  # each model's KV pool; None: a quarter of `memory`, else of free memory
    backend: str = "auto"
    chat_template: str | None = None  # only with one model: each of several uses its own
    prefix_cache: bool = True

    @property
    def kv_bytes(self) -> int | None:
        """Each model's KV pool budget at most (None: the pool's default, from free memory)."""
        if self.kv_memory is not None or self.memory is None:
            return self.kv_memory
        return self.memory // 4

    @property
    def fits_kv(self) -> bool:
        """Whether a model's KV pool is shrunk to what its weights leave of --model-memory (down to
        MIN_KV_BYTES): the pool's size is Realm's choice here, not the user's (--kv-memory)."""
        return self.kv_memory is None and self.memory is not None

    def kv_estimate(self, source: ModelSource) -> int:
        """A model's KV pool budget as counted before it is loaded: kv_bytes, or, fitted, what its file
        leaves of a quarter of the budget (maybe 0: the weights as loaded, without the file's
        vocabulary and metadata, are a little smaller than the file, and the pool is refitted to them)."""
        if not self.fits_kv or self.memory is None:
            return self.kv_bytes or 0
        return max(0, min(self.memory // 4, self.memory - file_size(source)))

    def kv_to_load(self, source: ModelSource) -> int | None:
        """The KV pool budget a model is loaded with (None: the pool's default, from free memory)."""
        return max(MIN_KV_BYTES, self.kv_estimate(source)) if self.fits_kv else self.kv_bytes

    def sources(self) -> list[ModelSource]:
        """Every model, the default first: the --model files, then --models-dir's (sorted by name), else
        the default model (REALM_MODEL or the bundled Gemma). RealmError for an invalid or repeated id,
        a file named twice, a missing file or folder, or --chat-template with several models."""
        found = [parse_model_flag(text) for text in self.models]
        if self.models_dir is not None:
            found += _directory(self.models_dir)
        if not found:
            path = default_model_path()
            found = [ModelSource(_id_of(path.stem, "the default model"), path)]
        seen: dict[str, Path] = {}
        files: dict[Path, str] = {}
        for source in found:
            if source.id in seen:
                raise RealmError(f"two models have the id {source.id!r} ({seen[source.id]} and {source.path}): "
                                 f"name one with --model NAME=PATH")
            # one Model per file in the process: two ids on it would unload it under each other
            file = source.path.resolve()
            if file in files:
                raise RealmError(f"{source.path} is served twice (as {files[file]!r} and {source.id!r}): "
                                 f"serve a file once")
            seen[source.id], files[file] = source.path, source.id
        if self.chat_template and len(found) > 1:
            raise RealmError("--chat-template applies to one model only: with several, each uses its own "
                             "template (or its family's)")
        return found


def parse_model_flag(text: str) -> ModelSource:
    """--model's value: NAME=PATH (NAME a model id) or PATH (the id is the file's stem). RealmError for
    an invalid id or a file that does not exist."""
    name, sep, rest = text.partition("=")
    named = bool(sep) and bool(MODEL_ID_PATTERN.fullmatch(name)) and bool(rest)
    path = Path(rest if named else text).expanduser()
    if not path.is_file():
        bad_name = f" (and {name!r} is not a model id: {MODEL_ID_RULE})" if sep and not named else ""
        raise RealmError(f"--model {text!r}: no such file {str(path)!r}{bad_name}")
    return ModelSource(name if named else _id_of(path.stem, f"--model {text!r}"), path)


def _id_of(stem: str, what: str) -> str:
    if not MODEL_ID_PATTERN.fullmatch(stem):
        raise RealmError(f"{what}: the file name {stem!r} is not a model id ({MODEL_ID_RULE}): "
                         f"name it with --model NAME=PATH")
    return stem


def _directory(folder: Path) -> list[ModelSource]:
    """Every *.gguf in `folder`, by name; a file whose stem is not a valid id is skipped with one warning."""
    if not folder.is_dir():
        raise RealmError(f"--models-dir {str(folder)!r} is not a folder")
    found = []
    for path in sorted(folder.glob("*.gguf")):
        if MODEL_ID_PATTERN.fullmatch(path.stem) and path.is_file():
            found.append(ModelSource(path.stem, path))
        else:
            log.warning("--models-dir: skipped %s: its name is not a model id (%s)", path.name, MODEL_ID_RULE)
    return found


def kv_fitted(memory: int, most: int, weights: int) -> int:
    """A KV pool budget of at most `most` that, with `weights`, fits `memory`; at least MIN_KV_BYTES."""
    return max(MIN_KV_BYTES, min(most, memory - weights))


def file_size(source: ModelSource) -> int:
    """The model file's size in bytes; 0 when it cannot be read (its load says why)."""
    try:
        return source.path.stat().st_size
    except OSError:
        return 0  # its load will say what is wrong with it
