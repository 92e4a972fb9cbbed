"""The prefix cache through a real `realm serve` (docs/prefix_cache.md): a tenant's follow-up reports
cached prompt tokens (whole and streamed usage), another tenant sending the same prefix reuses nothing,
/metrics shows the aggregate hit rate and cached bytes, and the answers equal `--no-prefix-cache`'s;
likewise `cached_tokens` in `realm batch` results and `realm run --json`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from oracle import DATA
from test_serve import MODEL, Served, serving

DOCUMENT = ("The lighthouse keeper wrote in his log every evening. He noted the wind, the colour of the sea, "
            "the ships that passed and the birds that rested on the gallery rail. ") * 6
TURN_1 = DOCUMENT + "Question: What did the keeper write about?\nAnswer:"
TURN_2 = TURN_1 + " The wind and the sea.\nQuestion: Where did the birds rest?\nAnswer:"


def _ask(served: Served, key: str, prompt: str) -> tuple[str, int, int]:
    done = served.client(key).completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    details = done.usage.prompt_tokens_details
    return done.choices[0].text, done.usage.prompt_tokens, details.cached_tokens if details else -1


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    with serving(tmp_path_factory.mktemp("cached")) as cached, \
            serving(tmp_path_factory.mktemp("uncached"), "--no-prefix-cache") as uncached:
        yield cached, uncached


def test_follow_ups_reuse_their_tenants_prefix_only_and_answer_as_without_the_cache(both):
    cached, uncached = both
    alice, bob, plain = cached.tenant("alice"), cached.tenant("bob"), uncached.tenant("alice")
    first = _ask(cached, alice, TURN_1)
    assert first[2] == 0
    follow = _ask(cached, alice, TURN_2)
    assert follow[2] >= first[1] - 16 and follow[2] % 16 == 0 and follow[2] < follow[1]
    other = _ask(cached, bob, TURN_2)  # the same text from another tenant: nothing of alice's is used
    assert other[2] == 0 and other[0] == follow[0]
    assert _ask(uncached, plain, TURN_1) == (first[0], first[1], 0)
    assert _ask(uncached, plain, TURN_2) == (follow[0], follow[1], 0)

    stream = cached.client(alice).completions.create(model=MODEL, prompt=TURN_2, max_tokens=6, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == follow[0]
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= follow[2]

    text = cached.admin("GET", "/metrics").text
    gauges = {line.split("{")[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("realm_engine_")}
    assert gauges["realm_engine_prefix_cache_hit_rate"] > 0 and gauges["realm_engine_prefix_cache_bytes"] > 0
    assert "alice" not in "".join(line for line in text.splitlines() if "prefix_cache" in line)
    off = {line.split("{")[0]: float(line.split()[1]) for line in uncached.admin("GET", "/metrics").text.splitlines()
           if line.startswith("realm_engine_prefix")}
    assert off["realm_engine_prefix_cache_hit_rate"] == 0 and off["realm_engine_prefix_cache_bytes"] == 0


def test_chat_turns_report_cached_tokens(both):
    cached, _ = both
    key = cached.tenant("carol")
    history = [{"role": "system", "content": DOCUMENT}, {"role": "user", "content": "What did he note?"}]
    first = cached.client(key).chat.completions.create(model=MODEL, messages=history, max_tokens=4, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And the birds?"}]
    second = cached.client(key).chat.completions.create(model=MODEL, messages=history, max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 32
    assert httpx.get(cached.url + "/metrics").status_code == 401  # only the admin reads the figures


# --- realm batch and realm run ------------------------------------------------------------------

TINY = str(DATA / "tiny-llama-F32.gguf")
GUEST = str(Path(__file__).resolve().parent.parent / "guest" / "generate.wasm")


def test_batch_reports_cached_tokens_per_tenant_and_equals_no_prefix_cache(realm, tmp_path):
    for name in ("x", "y"):
        assert realm("tenant", "create", name).returncode == 0
        assert realm("tenant", "deploy", name, GUEST).returncode == 0
    prompt = "a b c d e f g h " * 8
    lines = [{"tenant": "x", "prompt": prompt, "max_tokens": 4, "temperature": 0},
             {"tenant": "x", "prompt": prompt + "i j k", "max_tokens": 4, "temperature": 0},
             {"tenant": "y", "prompt": prompt + "i j k", "max_tokens": 4, "temperature": 0}]
    source = tmp_path / "requests.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def batch(*flags: str) -> list[dict]:
        done = realm("batch", str(source), "-m", TINY, "-b", "numpy", "--concurrency", "1", *flags)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    on, off = batch(), batch("--no-prefix-cache")
    assert on[0]["cached_tokens"] == 0 and on[1]["cached_tokens"] >= 16 and on[2]["cached_tokens"] == 0
    assert [r["cached_tokens"] for r in off] == [0, 0, 0]
    assert [r["text"] for r in on] == [r["text"] for r in off]


def test_run_json_reports_cached_tokens(realm):
    for flags in ((), ("--no-prefix-cache",)):
        done = realm("run", "Once upon a time", "-m", TINY, "-b", "numpy", "--temperature", "0", "--max-tokens",
                     "3", "--json", *flags)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["cached_tokens"] == 0  # one request: nothing before it to reuse
