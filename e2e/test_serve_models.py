"""`realm serve` with three models (docs/serve.md, "Many models"): the bundled Gemma (the default model)
and two tiny models of other architectures (qwen2, Llama 3), each answering as llama.cpp does on its
file, also under a --model-memory smaller than the three together, where models are unloaded and
loaded again between requests. Tenants see only the models they may use."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_error_line
from oracle import ARCHS, DATA, arch_sequences
from test_serve import FRANCE, MODEL, Served, free_port, serving

from host_functions.formats.gguf_file import GGUFFile
from host_functions.tokenizer import Tokenizer
from realm.models import default_model_path

KV = "8M"


@dataclass(frozen=True)
class Case:
    """A prompt whose tokens are a prefix of one of llama.cpp's reference sequences, and llama.cpp's
    next-token log-probabilities after it."""

    model: str
    prompt: str
    n_tokens: int
    log_softmax: np.ndarray

    @property
    def greedy(self) -> int:
        return int(np.argmax(self.log_softmax))


def case(model: str, gguf: str, sequence: int, k: int) -> Case:
    tokenizer = Tokenizer.from_metadata(GGUFFile(ARCHS / gguf).metadata)
    reference = arch_sequences(gguf)[sequence]
    ids = reference.tokens[:k].tolist()
    prompt = tokenizer.decode(ids[1:] if tokenizer.add_bos else ids)
    assert tokenizer.encode(prompt) == ids  # the server sees llama.cpp's very tokens
    logits = reference.logits[k - 1].astype(np.float64)
    return Case(model, prompt, k, logits - logits.max() - np.log(np.exp(logits - logits.max()).sum()))


# Prompts that tokenize back to the reference's ids (random ids rarely do)
CASES = [case("qwen", "tiny-qwen2-F16.gguf", 1, 11), case("llama3", "tiny-llama3-F16.gguf", 2, 5)]


def flags(gemma: Path) -> list[str]:
    """Gemma named as the other tests know it (the default model), qwen2 named, Llama 3 by its file's stem."""
    return [f"--model={MODEL}={gemma}", "--model", f"qwen={ARCHS / 'tiny-qwen2-F16.gguf'}",
            "--model", f"llama3={ARCHS / 'tiny-llama3-F16.gguf'}", "--kv-memory", KV]


@pytest.fixture(scope="module")
def gemma() -> Path:
    return default_model_path()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("models"), *flags(gemma)) as server:
        yield server


def check_answers(server: Served, key: str) -> None:
    """Gemma's greedy answer, then each tiny model's next token and its log-probability, as llama.cpp's."""
    client = server.client(key)
    done = client.completions.create(model=MODEL, prompt=FRANCE["prompt"], max_tokens=8, temperature=0)
    assert FRANCE["greedy_text"].startswith(done.choices[0].text) and done.choices[0].text.startswith(" Paris")
    for c in CASES:
        done = client.completions.create(model=c.model, prompt=c.prompt, max_tokens=1, temperature=0, logprobs=1)
        assert done.model == c.model and done.usage.prompt_tokens == c.n_tokens
        assert abs(done.choices[0].logprobs.token_logprobs[0] - c.log_softmax[c.greedy]) < 1e-2
        assert done.choices[0].logprobs.token_logprobs[0] == pytest.approx(c.log_softmax.max(), abs=1e-2)


def test_each_model_answers_as_llama_cpp_does(three):
    key = three.tenant("every")
    check_answers(three, key)
    models = {m["id"]: m for m in three.admin("GET", "/admin/health").json()["models"]}
    assert set(models) == {MODEL, "qwen", "llama3"} and all(m["loaded"] and m["bytes"] > 0 for m in models.values())
    assert three.admin("GET", "/admin/health").json()["model"] == MODEL  # the first --model is the default


def test_a_streaming_response_holds_its_model_until_it_ends(three):
    def in_use() -> int:
        return next(m["in_use"] for m in three.admin("GET", "/admin/health").json()["models"] if m["id"] == MODEL)

    stream = three.client(three.tenant("streamer")).completions.create(
        model=MODEL, prompt=FRANCE["prompt"], max_tokens=256, temperature=0, stream=True)
    next(chunk for chunk in stream if chunk.choices[0].text)
    assert in_use() == 1  # held while the answer streams: never unloaded under it
    stream.close()  # the client leaves: the run is cancelled and the model released
    deadline = time.monotonic() + 30
    while in_use() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_use() == 0


def test_a_tenant_sees_only_its_models_and_others_are_the_same_404(three):
    key = three.tenant("narrow")
    assert three.admin("PUT", "/admin/tenants/narrow/models", json={"models": ["qwen"]}).status_code == 200
    client = three.client(key)
    assert [m.id for m in client.models.list().data] == ["qwen"]
    errors = []
    for name in (MODEL, "no-such-model"):
        with pytest.raises(Exception) as refused:
            client.completions.create(model=name, prompt="Hi", max_tokens=1)
        errors.append((refused.value.status_code, refused.value.body["code"], refused.value.body["message"]))
        with pytest.raises(Exception) as missing:
            client.models.retrieve(name)
        assert missing.value.status_code == 404
    assert errors[0][:2] == errors[1][:2] == (404, "model_not_found")
    assert errors[0][2].replace(MODEL, "X") == errors[1][2].replace("no-such-model", "X")


def test_metrics_show_each_model(three):
    text = three.admin("GET", "/metrics").text
    for model in (MODEL, "qwen", "llama3"):
        assert f'realm_model_bytes{{model="{model}"}}' in text and f'realm_model_in_use{{model="{model}"}} 0.0' in text
    assert 'realm_model_requests_total{endpoint="completion",model="qwen"}' in text


def test_under_a_budget_smaller_than_the_three_models_are_swapped_and_answers_stay_exact(three, gemma, tmp_path):
    """The budget holds Gemma and one tiny model (as measured by the first server), not all three."""
    measured = {m["id"]: m["bytes"] for m in three.admin("GET", "/admin/health").json()["models"]}
    budget = measured[MODEL] + max(measured["qwen"], measured["llama3"]) + (1 << 20)
    assert budget < sum(measured.values())
    with serving(tmp_path, *flags(gemma), "--model-memory", str(budget)) as small:
        key = small.tenant("every")
        for _ in range(2):
            check_answers(small, key)
        unloads = small.log.read_text().count("unloaded model")
        assert unloads >= 3, small.log.read_text()
        loaded = [m for m in small.admin("GET", "/admin/health").json()["models"] if m["loaded"]]
        assert sum(m["bytes"] for m in loaded) <= budget



def test_a_budget_below_the_three_files_together_serves_each_exactly_without_kv_memory(gemma, tmp_path):
    """A budget a user reads off the files (smaller than the three together, no --kv-memory): each
    model's KV pool is fitted to what its weights leave, and every answer is still llama.cpp's."""
    files = [gemma, ARCHS / "tiny-qwen2-F16.gguf", ARCHS / "tiny-llama3-F16.gguf"]
    budget = sum(f.stat().st_size for f in files) - 1
    served_flags = [f for f in flags(gemma) if f not in ("--kv-memory", KV)]
    with serving(tmp_path, *served_flags, "--model-memory", str(budget)) as small:
        check_answers(small, small.tenant("every"))
        assert small.log.read_text().count("unloaded model") >= 1, small.log.read_text()


QWEN2 = ARCHS / "tiny-qwen2-Q4_K.gguf"


@pytest.mark.parametrize(("args", "fragments"), [
    (["--model", str(QWEN2), "--model", str(QWEN2)], ["two models have the id 'tiny-qwen2-Q4_K'", "NAME=PATH"]),
    (["--model", "bad!=missing.gguf"], ["no such file", "'bad!' is not a model id"]),
    (["--model", f"a={QWEN2}", "--model", f"b={QWEN2}"], ["served twice (as 'a' and 'b')"]),
    (["--model", f"a={QWEN2}", "--model", str(ARCHS / "tiny-qwen3-Q4_K.gguf"), "--chat-template", "chatml"],
     ["one model only"]),
    (["--model", str(QWEN2), "--model-memory", "600K"], ["needs", "more than the whole --model-memory of 600 KiB"]),
    (["--models-dir", "no-such-folder"], ["is not a folder"]),
])
def test_bad_model_flags_are_one_error_line(realm, args, fragments):
    one_error_line(realm("serve", "--port", str(free_port()), "--backend", "cpu", *args), 1, *fragments)


def test_models_dir_skips_a_name_that_is_not_an_id_and_a_bad_file_fails_alone(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "broken.gguf").write_bytes(b"GGUF" + bytes(60))
    (folder / "not an id.gguf").write_bytes(QWEN2.read_bytes())
    (folder / "qwen.gguf").write_bytes(QWEN2.read_bytes())
    with serving(tmp_path, "--models-dir", str(folder), "--kv-memory", KV) as server:
        client = server.client(server.tenant("dir"))
        assert sorted(m.id for m in client.models.list().data) == ["broken", "qwen"]
        for _ in range(2):
            with pytest.raises(Exception) as failed:
                client.completions.create(model="broken", prompt="Hi", max_tokens=1)
            assert failed.value.status_code == 500 and failed.value.body["code"] == "model_load_failed"
        assert client.completions.create(model="qwen", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
        log = server.log.read_text()
    assert log.count("skipped not an id.gguf") == 1 and log.count("could not be loaded") == 1, log


def test_an_adapter_binds_when_it_fits_a_served_model_and_other_models_refuse_it(tmp_path):
    adapter, other = DATA / "tiny-llama-lora-r8.gguf", DATA / "tiny-gemma3-lora-r8.gguf"
    with serving(tmp_path, "--model", f"tl={DATA / 'tiny-llama-F32.gguf'}", "--model", f"qwen={QWEN2}",
                 "--kv-memory", KV) as server:
        client = server.client(server.tenant("styled"))
        bound = server.admin("PUT", "/admin/tenants/styled/adapters/style", json={"path": str(adapter)})
        assert bound.status_code == 200, bound.text
        refused = server.admin("PUT", "/admin/tenants/styled/adapters/other", json={"path": str(other)})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_adapter"
        done = client.completions.create(model="tl", prompt="Hi", max_tokens=2, extra_body={"lora": "style"})
        assert done.usage.completion_tokens == 2
        with pytest.raises(Exception) as wrong:
            client.completions.create(model="qwen", prompt="Hi", max_tokens=2, extra_body={"lora": "style"})
        assert wrong.value.status_code == 400 and wrong.value.body["code"] == "adapter_error"
