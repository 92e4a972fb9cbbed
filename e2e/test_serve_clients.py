"""What OpenAI clients and browsers expect of `realm serve` beyond completions (issue 21): a model
by id, CORS, errors that name the limit that applies, clean start-up failures and shutdown, and
Ctrl-C in `realm chat`. The real server on loopback, driven with the official `openai` client and
httpx.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from conftest import REALM
from oracle import DATA
from test_serve import MODEL, Served, free_port, serving

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("clients"), "--cors-origin", ORIGIN, "--cors-origin",
                 "http://localhost:3000") as server:
        yield server


@pytest.fixture(scope="module")
def key(served: Served) -> str:
    return served.tenant("web")


def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_404_model_not_found(served, key):
    client = served.client(key)
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "realm")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.code == "model_not_found" and "gpt-4" in missing.value.message
    anonymous = httpx.get(f"{served.url}/v1/models/{MODEL}", timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"


def test_a_preflight_from_an_allowed_origin_is_answered_and_its_request_carries_cors_headers(served, key):
    preflight = httpx.options(served.url + "/v1/chat/completions", timeout=30, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    listed = httpx.get(served.url + "/v1/models", timeout=30,
                       headers={"Origin": ORIGIN, "Authorization": f"Bearer {key}"})
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == ORIGIN


def test_other_origins_get_no_cors_headers(served):
    refused = httpx.options(served.url + "/v1/completions", timeout=30, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_cors_is_off_by_default(tmp_path):
    with serving(tmp_path) as server:
        preflight = httpx.options(server.url + "/v1/completions", timeout=30, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_a_long_request_is_context_length_exceeded_naming_the_tenants_limit_and_how_to_raise_it(served, key):
    client = served.client(key)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=5000)
    error = caught.value
    assert error.code == "context_length_exceeded" and error.param == "max_tokens"
    assert "4096 of tenant 'web''s max_context limit" in error.message
    assert "realm tenant set-limits web max_context=N" in error.message and "32768" not in error.message
    with pytest.raises(openai.BadRequestError) as prompt:
        client.completions.create(model=MODEL, prompt="word " * 5000, max_tokens=1)
    assert prompt.value.code == "context_length_exceeded" and prompt.value.param == "prompt"


def test_a_busy_port_or_a_bad_host_is_one_error_line_and_exit_1(served):
    port = int(served.url.rsplit(":", 1)[1])
    for args, cause in ((["--port", str(port)], "Address already in use"),
                        (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid")):
        done = subprocess.run([REALM, "serve", "--backend", "cpu", *args], capture_output=True, text=True,
                              env=served.env, timeout=120)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("Error: cannot listen on") and cause in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr


def test_ctrl_c_twice_answers_every_request_in_flight_with_an_error_never_a_cut_stream(tmp_path):
    with serving(tmp_path, "--drain-timeout", "60") as server:
        key = server.tenant("main")
        # end-of-text banned (Gemma's <eos> 1, <end_of_turn> 106): the answers are still going at the signals
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0,
                "logit_bias": {"1": -100, "106": -100}}
        whole: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: whole.append(httpx.post(
            server.url + "/v1/completions", json=body, timeout=120, headers={"Authorization": f"Bearer {key}"})))
        waiting.start()
        events: list[str] = []
        with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:  # Ctrl-C drains (for 60 s); Ctrl-C again ends the runs now
                        server.proc.send_signal(signal.SIGINT)
                        time.sleep(1)  # two signals before Python's handler runs would be one
                        server.proc.send_signal(signal.SIGINT)
        assert json.loads(events[-1])["error"]["code"] == "server_shutdown"
        waiting.join(timeout=120)
        assert whole[0].status_code == 503 and whole[0].json()["error"]["code"] == "server_shutdown"
        assert server.proc.wait(timeout=60) == 130  # `realm`'s status for Ctrl-C
        assert "Traceback" not in server.log.read_text()


def test_ctrl_c_in_realm_chat_stops_the_answer_and_the_chat_goes_on(realm_env):
    chat = subprocess.Popen([REALM, "chat", "--backend", "cpu", "--temperature", "0", "--max-tokens", "2000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=realm_env)
    assert chat.stdin is not None and chat.stdout is not None
    chat.stdin.write(b"Tell me a long story about a dragon.\n")
    chat.stdin.flush()
    streamed = b""
    while len(streamed) < 8:  # the answer is streaming
        assert select.select([chat.stdout], [], [], 240)[0], "no answer streamed"
        streamed += os.read(chat.stdout.fileno(), 64)
    chat.send_signal(signal.SIGINT)
    out, err = chat.communicate(b"What is the capital of France?\n", timeout=300)
    stderr = err.decode()
    assert chat.returncode == 0, stderr  # the chat ended at the end of its input, not at Ctrl-C
    assert stderr.count("[stopped]") == 1 and "Traceback" not in stderr
    assert "likely a base model" in stderr and "--model" in stderr  # the bundled Gemma has no chat template



def test_streamed_logprobs_arrive_with_each_chunk_and_add_up_to_the_whole_answers(served, key):
    client = served.client(key)
    prompt = "The capital of France is"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    chunks = [c for c in client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                                   logprobs=2, stream=True) if c.choices]
    texts = [c for c in chunks if c.choices[0].text]
    assert len(texts) >= 3 and all(c.choices[0].logprobs and c.choices[0].logprobs.tokens for c in texts)
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for lp in streamed for t in lp.tokens] == whole.choices[0].logprobs.tokens
    assert [o for lp in streamed for o in lp.text_offset] == whole.choices[0].logprobs.text_offset
    assert [v for lp in streamed for v in lp.token_logprobs] == whole.choices[0].logprobs.token_logprobs

    messages = [{"role": "user", "content": "Name a colour."}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=2)
    parts = [c for c in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                       logprobs=True, top_logprobs=2, stream=True) if c.choices]
    with_text = [c for c in parts if c.choices[0].delta.content]
    assert len(with_text) >= 3 and all(c.choices[0].logprobs and c.choices[0].logprobs.content for c in with_text)
    content = [e for c in parts if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob, len(e.top_logprobs)) for e in content] == \
        [(e.token, e.logprob, 2) for e in answer.choices[0].logprobs.content]


def test_embeddings_are_llama_cpps_for_text_and_token_inputs(served, key):
    oracle = json.loads((DATA / "gemma3-270m.embeddings.json").read_text())  # llama-server --pooling mean
    client = served.client(key)
    done = client.embeddings.create(model=MODEL, input=oracle["inputs"])  # the client asks for base64
    assert [d.index for d in done.data] == list(range(len(oracle["inputs"])))
    assert done.usage.prompt_tokens == done.usage.total_tokens > len(oracle["inputs"])
    for ours, theirs in zip(done.data, oracle["embeddings"], strict=True):
        vector = np.asarray(ours.embedding)
        assert vector.shape == (640,) and abs(np.linalg.norm(vector) - 1) < 1e-4
        assert float(vector @ np.asarray(theirs)) > 0.995  # Q4_K_M: llama.cpp's 8-bit activations differ a little
    first = client.embeddings.create(model=MODEL, input=oracle["inputs"][0], encoding_format="float")
    assert np.allclose(first.data[0].embedding, done.data[0].embedding, atol=1e-6)
    tokens = client.embeddings.create(model=MODEL, input=[[2, 818, 5279]], encoding_format="float")
    assert len(tokens.data[0].embedding) == 640 and tokens.usage.prompt_tokens == 3


def test_bad_embedding_requests_are_400_and_a_long_input_names_the_limit(served, key):
    client = served.client(key)
    with pytest.raises(openai.BadRequestError, match="input must be"):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.BadRequestError) as long_input:
        client.embeddings.create(model=MODEL, input=[[2] * 5000])
    assert long_input.value.code == "context_length_exceeded" and "max_context" in long_input.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="a")


def test_the_readmes_serve_quick_start_runs_as_written(tmp_path, realm_env):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("Serve it over the OpenAI API", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the set-up's .venv, as after setup.sh
    script = block.replace("8080", str(free_port())) + "status=$?\nkill $!\nwait $!\nexit $status\n"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=realm_env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # its last line is the answer (sampled: any text), after the access log's 200
    assert '"POST /v1/completions HTTP/1.1" 200 OK' in done.stdout and done.stdout.splitlines()[-1].strip()
