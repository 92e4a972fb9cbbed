"""One error taxonomy for Realm, at the bottom layer so the engine, the ABI, the runtime and the CLI share it.

Every error a user or tenant can cause is a `RealmError`; the CLI prints its message on one line and
exits with status 1. Asserts are kept for internal invariants only.
"""


class RealmError(Exception):
    """Base of every error Realm reports to a user or tenant."""


class ModelFormatError(RealmError):
    """A model file is not a usable GGUF file (bad magic, truncated, wrong shape, missing tensor)."""


class UnsupportedError(RealmError):
    """A model uses something Realm does not implement (architecture, tensor type, tokenizer)."""


class BackendError(RealmError):
    """A compute backend is unavailable or failed."""


class GuestError(RealmError):
    """A guest module is invalid, trapped, or broke the ABI."""


class QuotaExceeded(GuestError):
    """A tenant exceeded one of its limits (memory, fuel, time, tokens, sequences)."""


class KVPoolFull(QuotaExceeded):
    """The model's KV pool has no free block for a sequence's new tokens."""


class KVPoolTooSmall(KVPoolFull):
    """A sequence needs more blocks than the whole pool holds: waiting cannot help."""


class Overloaded(RealmError):
    """A shared resource (KV memory, the adapter pool, merged LoRA copies) stayed taken by other work
    until the request's deadline: its tenant is over its fair share, or the resource is full. Unlike
    QuotaExceeded, retrying later can succeed (a server answers 503 with Retry-After)."""


class AdapterError(RealmError):
    """A LoRA adapter cannot be used with a model (bad file, wrong base, shapes, rank, alpha).

    `detail` says what is wrong and `adapter` names the adapter it is about ("LoRA adapter {adapter}:
    {detail}"), so whoever shows it to a tenant can name the adapter as the tenant knows it (its alias)
    instead of by the file's name on the host: `naming`.
    """

    def __init__(self, detail: str, adapter: str | None = None) -> None:
        super().__init__(detail if adapter is None else f"LoRA adapter {adapter}: {detail}")
        self.detail, self.adapter = detail, adapter

    def naming(self, adapter: str) -> "AdapterError":
        """The same error about the adapter called `adapter`."""
        return AdapterError(self.detail, adapter)


class ChatTemplateError(RealmError):
    """A chat template does not parse, raised an exception, or got messages it cannot render."""


class TenantError(RealmError):
    """A tenant operation failed (unknown tenant, duplicate name, bad deployment)."""


class SequenceError(RealmError):
    """A sequence was used out of order or beyond its capacity, or fed a token outside the vocabulary."""


class TokenRangeError(SequenceError):
    """A token id is outside the vocabulary."""


class CapacityError(SequenceError):
    """A sequence cannot hold that many tokens."""


class StepOrderError(SequenceError):
    """A step's calls came out of order (layer skipped or repeated, append during a step, no pending tokens)."""


class ContextLengthExceeded(RealmError):
    """A prompt does not fit in the context it is to run in (the model's, or a smaller one asked for)."""


class RequestCancelled(RealmError):
    """The caller cancelled a request (Ctrl-C, a client that went away) before it finished."""


class AuthError(RealmError):
    """A request carries no API key, or one that is unknown or revoked."""
