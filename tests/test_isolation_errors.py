"""Hostile inputs against the shared pools, run through the reference guest (docs/isolation.md): a
tenant over its share of the adapter pool or the merged copies waits within its deadline and then
fails as Overloaded (a server's 503 with Retry-After), never as the guest's error; an adapter it may
never hold, or a bound adapter file that went bad after binding, fails its request as an AdapterError
naming the alias (a 400), never the host path; JSON nested thousands deep is a clean error wherever
Realm parses what a tenant wrote."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from oracle import DATA
from test_lora_loading import config_of, write_peft

from host_functions.abi import AdapterBinding, Limits
from host_functions.abi.logits import sampling_params_from_json
from host_functions.abi.status import AbiError
from host_functions.engine.model import Model, StepOwner
from host_functions.errors import Overloaded, RealmError
from host_functions.fair_share import Claim, FairShares, waiting
from host_functions.kv.pool import BLOCK_TOKENS
from host_functions.lora.adapter import load_adapter
from host_functions.lora.merged import MergedLoraCache
from host_functions.lora.pool import AdapterPool
from realm.request.sources import from_batch_line
from realm.sandbox.intake import compile_guest, reference_guest_path
from realm.sandbox.report import GuestRunAdapterError, GuestRunOverLimit, GuestRunOverloaded
from realm.sandbox.run import TenantSandbox
from realm.server.app import guest_failure

BASE = DATA / "tiny-llama-F32.gguf"
ADAPTER = DATA / "tiny-llama-lora-r8.gguf"
REQUEST = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 4, "lora": "style"}


@pytest.fixture(scope="module")
def guest():
    return compile_guest(reference_guest_path().read_bytes())


@pytest.fixture
def model():
    return Model.load(BASE, backend="numpy")


def _run(model: Model, guest, tenant: str, path: Path | str, merged: bool = False, **limits):
    sandbox = TenantSandbox(model, Limits(**limits), tenant=tenant)
    return sandbox.run(guest, REQUEST, adapters={"style": AdapterBinding(str(path), 1.0, merged)})


def _one_adapter_pool(model: Model) -> int:
    """The model's adapter pool made just large enough for two tenants' shares of one adapter each
    (and no more); returns the adapter's bytes."""
    nbytes = load_adapter(ADAPTER, model.config).nbytes
    model.adapters = AdapterPool(model.config, budget_bytes=nbytes * 22 // 10)
    return nbytes


# ---- the adapter pool ------------------------------------------------------------------------------

def test_a_tenant_over_its_adapter_share_waits_to_its_deadline_then_is_overloaded(model, guest):
    _one_adapter_pool(model)
    model.adapters.acquire(ADAPTER, Claim("a"))
    model.adapters.acquire(ADAPTER, Claim("b"))  # a and b hold their shares: nothing is left for c
    started = time.monotonic()
    with pytest.raises(GuestRunOverloaded, match="LoRA adapter 'style': .*bytes of LoRA adapters") as err:
        _run(model, guest, "c", ADAPTER, wall_seconds=0.5)
    assert time.monotonic() - started >= 0.4  # it waited for its share before giving up
    answer = guest_failure(err.value)
    assert answer.status == 503 and answer.headers["Retry-After"] == "1" and answer.code == "overloaded"
    assert str(DATA) not in answer.message


def test_a_waiting_tenant_gets_its_share_as_soon_as_another_releases_it(model, guest):
    _one_adapter_pool(model)
    held = model.adapters.acquire(ADAPTER, Claim("a"))
    model.adapters.acquire(ADAPTER, Claim("b"))
    timer = threading.Timer(0.3, model.adapters.release, (held, "a"))
    timer.start()
    try:
        result = _run(model, guest, "c", ADAPTER, wall_seconds=60)
    finally:
        timer.join()
    assert result.text and model.adapters.charges.shares.holders() == {"b": held.nbytes}


def test_an_adapter_larger_than_the_tenants_adapter_bytes_fails_at_once_naming_the_limit(model, guest):
    nbytes = load_adapter(ADAPTER, model.config).nbytes
    started = time.monotonic()
    with pytest.raises(GuestRunAdapterError, match="'style'.*its own limit.*adapter_bytes") as err:
        _run(model, guest, "small", ADAPTER, adapter_bytes=nbytes - 1, wall_seconds=60)
    assert time.monotonic() - started < 30  # no wait for what can never fit
    answer = guest_failure(err.value)
    assert answer.status == 400 and answer.code == "adapter_error"


def test_merged_copies_over_the_tenants_share_are_overloaded_not_a_guest_error(model, guest):
    adapter = model.adapters.acquire(ADAPTER)
    one = model.backend.merged_lora.merged_nbytes(adapter)
    model.backend.merged_lora = MergedLoraCache(model.backend, model.config, budget_bytes=one * 3 // 2)
    holder = model.open_sequence(8)
    holder.set_adapter(adapter, 1.0, merged=True, claim=Claim("a"))  # a's copy fills what b may take
    with pytest.raises(GuestRunOverloaded, match="'style': its merged weights"):
        _run(model, guest, "b", ADAPTER, merged=True, wall_seconds=0.5)
    holder.close()
    assert _run(model, guest, "b", ADAPTER, merged=True).text  # a's copy is released: b's fits


# ---- KV memory -------------------------------------------------------------------------------------

def test_a_tenant_over_its_kv_share_is_overloaded_and_one_that_can_never_fit_is_over_its_limit(guest):
    model = Model.load(BASE, kv_memory=64 << 20, batched=True)
    model.set_kv_memory(16 * model.backend.kv_block_bytes(BLOCK_TOKENS))  # 2 blocks kept in reserve
    hog = model.open_sequence(512)
    hog.step(list(range(1, 14 * BLOCK_TOKENS + 1)), StepOwner(tenant="hog"))  # all hog may hold
    request = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 4}
    with pytest.raises(GuestRunOverloaded, match="waiting for KV memory") as err:
        TenantSandbox(model, Limits(wall_seconds=0.5), tenant="hog").run(guest, request)
    answer = guest_failure(err.value)
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    with pytest.raises(GuestRunOverLimit, match="KV cache memory too small.*kv_blocks") as never:
        TenantSandbox(model, Limits(kv_blocks=1), tenant="small").run(guest, {**request, "prompt": "word " * 40})
    assert guest_failure(never.value).status == 400
    assert TenantSandbox(model, tenant="benign").run(guest, request).text  # the reserve serves another tenant
    hog.close()


# ---- adapter files that go bad after binding -------------------------------------------------------

def _bound_folder(tmp_path: Path) -> Path:
    config = config_of(BASE)
    return write_peft(load_adapter(ADAPTER, config), config, tmp_path / "secret-host-folder")


@pytest.mark.parametrize("spoil, reason", [
    (lambda f: (f / "adapter_config.json").write_text("[" * 5000 + "]" * 5000), "nested deeper than 64"),
    (lambda f: (f / "adapter_config.json").write_text('{"r": 8, "lora_alpha": ' + "[" * 900 + "]" * 900 + "}"),
     "nested deeper than 64"),
    (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "header"),
    (lambda f: shutil.rmtree(f), "no such file"),
])
def test_a_bound_adapter_that_went_bad_fails_its_request_naming_the_alias_not_the_path(model, guest, tmp_path,
                                                                                     spoil, reason):
    folder = _bound_folder(tmp_path)
    assert _run(model, guest, "t", folder).text  # bound and working
    model.adapters = AdapterPool(model.config)  # a fresh server: nothing cached yet
    spoil(folder)
    with pytest.raises(GuestRunAdapterError, match=f"LoRA adapter 'style': .*{reason}") as err:
        _run(model, guest, "t", folder)
    answer = guest_failure(err.value)
    assert answer.status == 400 and "secret-host-folder" not in answer.message and str(tmp_path) not in answer.message


# ---- waiting for a share ---------------------------------------------------------------------------

def test_waiting_counts_the_tenant_as_active_and_stops_when_told():
    shares = FairShares(100, "units")
    shares.take(Claim("hog"), 80, free=100)
    tries: list[int] = []
    seen: list[int] = []

    def attempt() -> None:
        tries.append(1)
        seen.append(shares.share(Claim("hog")))
        raise Overloaded("not now")

    with pytest.raises(Overloaded, match="not now"):
        waiting(attempt, shares, Claim("newcomer"), give_up=lambda: len(tries) >= 3)
    assert len(tries) == 3 and seen[1] == 50  # while it waited, hog's share was halved
    assert shares.share(Claim("hog")) == 88  # and once it stopped waiting, hog is alone again (its ceiling)
    assert waiting(lambda: 7, shares, Claim("x"), give_up=lambda: True) == 7


# ---- JSON nested thousands deep wherever a tenant writes JSON --------------------------------------

@pytest.mark.parametrize("depth", [65, 1000, 5000, 100_000])
def test_deep_json_is_a_clean_error_in_batch_lines_and_guest_parameters(depth):
    nested = "[" * depth + "]" * depth
    with pytest.raises(RealmError, match="nested deeper than 64"):
        from_batch_line(json.dumps({"prompt": "x"})[:-1] + ', "stop": ' + nested + "}")
    with pytest.raises(AbiError, match="nested deeper than 64"):
        sampling_params_from_json(('{"temperature": 0, "x": ' + nested + "}").encode())
