"""`realm serve` against clients that try to hurt it or its other tenants: floods of large prompts,
byte-by-byte guests, rate budgets, slow and greedy connections, and bodies or fields built to crash
it. The real server on loopback (test_serve.serving), raw sockets where a test needs broken HTTP.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from test_serve import ADMIN_KEY, FRANCE, MODEL, Served, marker_guest, serving

PER_CLIENT = 8
TIMEOUTS = ("--header-timeout", "1", "--body-timeout", "1", "--max-connections-per-client", str(PER_CLIENT))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("hardened"), *TIMEOUTS) as server:
        yield server


@pytest.fixture(scope="module")
def key(served: Served) -> str:
    return served.tenant("main")


def post(served: Served, key: str, body: dict | bytes, path: str = "/v1/completions") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(served.url + path, content=content, timeout=120,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def byte_guest(n: int) -> str:
    """A guest that emits n bytes ("a".."z" over and over) one emit call per byte."""
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    return f"""(module (import "realm" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{alphabet}")
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "realm_main") (param i32 i32) (result i32) (local $i i32)
    (loop $next
      (drop (call $emit (i32.add (i32.const 16) (i32.rem_u (local.get $i) (i32.const 26))) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const {n}))))
    (i32.const 0)))"""


def draft_guest(name: str) -> str:
    """A guest that asks the host for draft model `name` and answers "refused" or "opened"."""
    raw = name.encode()
    escaped = "".join(f"\\{b:02x}" for b in raw)
    return f"""(module (import "realm" "emit" (func $emit (param i32 i32) (result i32)))
  (import "realm" "draft_open" (func $draft (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "refusedopened")
  (data (i32.const 64) "{escaped}")
  (func (export "realm_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "realm_main") (param i32 i32) (result i32)
    (if (i32.lt_s (call $draft (i32.const 64) (i32.const {len(raw)})) (i32.const 0))
      (then (drop (call $emit (i32.const 16) (i32.const 7))))
      (else (drop (call $emit (i32.const 23) (i32.const 6)))))
    (i32.const 0)))"""


def sse_events(served: Served, key: str, body: dict) -> list[str]:
    """The data: lines of a streamed answer, as sent."""
    with httpx.stream("POST", served.url + "/v1/completions", json={**body, "stream": True}, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


# --- nothing a client sends runs on the event loop ---------------------------------------------

def test_a_flood_of_large_prompts_never_stalls_health_and_its_sender_is_rate_limited(served):
    flood = served.tenant("flood")
    assert served.cli("tenant", "rate-limit", "flood", "--requests-per-minute", "3").returncode == 0
    prompt = "The quick brown fox jumps over the lazy dog. " * 5000  # 225 kB: seconds of tokenizing
    answers: list[int] = []

    def send() -> None:
        answers.append(post(served, flood, {"model": MODEL, "prompt": prompt, "max_tokens": 1}).status_code)

    senders = [threading.Thread(target=send) for _ in range(6)]
    for sender in senders:
        sender.start()
    seen_while_busy = 0
    deadline = time.monotonic() + 120
    while any(s.is_alive() for s in senders) and time.monotonic() < deadline:
        busy_before = served.admin("GET", "/admin/health").json()["preparing"]
        assert httpx.get(served.url + "/health", timeout=30).json() == {"status": "ok"}
        if busy_before and served.admin("GET", "/admin/health").json()["preparing"]:
            seen_while_busy += 1  # the loop answered while a prompt was being tokenized
    for sender in senders:
        sender.join()
    assert seen_while_busy > 0
    # Counted before any tokenizing: 3 admitted (each too long for the context: 400), 3 refused at once.
    assert sorted(answers) == [400, 400, 400, 429, 429, 429]


def test_a_byte_by_byte_guest_streams_in_few_bounded_events(served):
    n = 40000
    key = served.tenant("chatty", byte_guest(n))
    events = sse_events(served, key, {"model": MODEL, "prompt": "x", "max_tokens": 4})
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == ("abcdefghijklmnopqrstuvwxyz" * n)[:n]
    assert len(texts) < n // 100  # one event per batch of emits, not one per byte
    assert max(len(t) for t in texts) <= 16384  # and none unbounded


# --- token rate: reserved at admission, settled at the end ----------------------------------------

def test_a_request_that_can_never_fit_the_token_budget_is_400_naming_the_limit(served):
    key = served.tenant("budget", marker_guest("ok"))
    assert served.cli("tenant", "rate-limit", "budget", "--tokens-per-minute", "100").returncode == 0
    never = error_of(post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 120}), 400)
    assert never["code"] == "tokens_per_minute" and "100 tokens per minute" in never["message"]
    assert never["param"] == "max_tokens"
    never_n = error_of(post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 30, "n": 4}), 400)
    assert "tokens per minute" in never_n["message"]  # max_tokens counts for every choice
    # Each reserves 92 of the 100 and uses 3: the unused part is refunded at the end, so they all fit.
    for _ in range(3):
        assert post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 90}).status_code == 200


def test_tokens_are_reserved_at_admission_so_running_requests_never_overspend(served):
    key = served.tenant("reserving")
    assert served.cli("tenant", "rate-limit", "reserving", "--tokens-per-minute", "100").returncode == 0
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as running:
        assert next(line for line in running.iter_lines() if line.startswith("data:"))
        # 65 tokens are held by the stream: 60 more do not fit until it ends.
        refused = post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 60})
        assert error_of(refused, 429)["type"] == "rate_limit_error"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Cut off, it is charged everything it reserved: still no room for 60 more, room for 30.
    assert post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 60}).status_code == 429
    assert post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 30}).status_code == 200


# --- slow and greedy connections ------------------------------------------------------------------

def _connect(served: Served) -> socket.socket:
    host, port = served.url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=60)
    return conn


def _closed_by_server(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            data = conn.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def test_connections_that_never_finish_their_headers_are_closed(served):
    slow = [_connect(served) for _ in range(3 * PER_CLIENT)]  # past the per-address bound: the oldest make room
    for conn in slow:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    for conn in slow:
        assert _closed_by_server(conn) == b""  # closed at the header deadline (1 s here), answered nothing
        conn.close()
    idle = _connect(served)  # a connection that never sends anything is closed as well
    assert _closed_by_server(idle) == b""


def test_a_body_that_never_arrives_is_cut_at_its_deadline(served, key):
    conn = _connect(served)
    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ")
    _closed_by_server(conn)  # whatever it answered, it closed the connection
    conn.close()
    assert post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 1}).status_code == 200


def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(served, key):
    conn = _connect(served)
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 1}).encode()
    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
                 b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
                 f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" +
                 b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # smuggled after it: never answered
    answer = _closed_by_server(conn)
    conn.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"connection: close" in head.lower()
    assert b"ambiguous_framing" in rest and answer.count(b"HTTP/1.1") == 1


def test_one_address_holds_a_bounded_number_of_connections_and_idle_ones_make_room(served, key):
    idle = [_connect(served) for _ in range(PER_CLIENT)]
    for conn in idle:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    time.sleep(0.3)
    # At the bound, a whole request still gets in: an unfinished connection gives up its place.
    assert post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 1}).status_code == 200
    for conn in idle:
        conn.close()
    # With every place taken by a request being answered, the next connection gets 503.
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3000, "stream": True}
    streams = []
    for _ in range(PER_CLIENT):
        conn = _connect(served)
        request = json.dumps(body).encode()
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(request)).encode() +
                     b"\r\n\r\n" + request)
        assert conn.recv(12) == b"HTTP/1.1 200"
        streams.append(conn)
    try:
        refused = httpx.get(served.url + "/health", timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_connections"
    finally:
        for conn in streams:
            conn.close()


def test_a_websocket_upgrade_is_answered_as_plain_http_within_the_guard(served):
    for _ in range(PER_CLIENT + 2):  # more than one address's places: each upgrade must give its place back
        conn = _connect(served)
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert conn.recv(12) == b"HTTP/1.1 200"  # not 101 Switching Protocols
        conn.close()
    assert httpx.get(served.url + "/health", timeout=30).status_code == 200


# --- clean errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"model": "m", "prompt": "x", "extra": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}",
    b'[' * 500 + b']' * 500,
])
def test_deeply_nested_bodies_are_400_invalid_json(served, key, body):
    assert error_of(post(served, key, body), 400)["code"] == "invalid_json"


@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfff b"', '["ok", {"\\udc80": 1}]'])
def test_lone_surrogates_are_400_invalid_json(served, key, text):
    body = f'{{"model": "{MODEL}", "prompt": "x", "max_tokens": 1, "field": {text}}}'.encode()
    assert error_of(post(served, key, body), 400)["code"] == "invalid_json"
    chat = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": {text}}}]}}'.encode()
    assert error_of(post(served, key, chat, "/v1/chat/completions"), 400)["code"] == "invalid_json"


@pytest.mark.parametrize("token", ["262144", "999999999", "-1"])
def test_logit_bias_ids_outside_the_vocabulary_are_400_naming_the_field(served, key, token):
    error = error_of(post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 1,
                                        "logit_bias": {token: 5}}), 400)
    assert error["param"] == "logit_bias" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("name", ["self:²", "self:\u0000", "draft:/etc/passwd", "draft:\u0000", "self:١"])
def test_malformed_or_forbidden_draft_names_are_400_naming_the_field(served, key, name):
    error = error_of(post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "speculative": name}), 400)
    assert error["param"] == "speculative"


@pytest.mark.parametrize("name", ["self:²", "draft:a\u0000b", "self:\u0000", "\u0000"])
def test_a_guest_that_names_a_malformed_draft_gets_a_status_not_a_host_crash(served, name):
    key = served.tenant(f"drafter{abs(hash(name)) % 10**6}", draft_guest(name))
    done = post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 1})
    assert done.status_code == 200, done.text
    assert done.json()["choices"][0]["text"] == "refused"
    assert "host function draft_open failed" not in served.log.read_text()


@pytest.mark.parametrize("config", ['{"r": 4, "lora_alpha": "x"}', '{"r": [4], "lora_alpha": -1}', "[1, 2]",
                                    '{"r": 4', '{"peft_type": 7}'])
def test_a_malformed_adapter_config_is_400_when_bound_never_a_host_crash(served, tmp_path, config):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(config)
    (folder / "adapter_model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    name = f"cfg{abs(hash(config)) % 10**6}"
    key = served.tenant(name)
    bound = served.admin("PUT", f"/admin/tenants/{name}/adapters/style", json={"path": str(folder), "scale": 1.0})
    error = error_of(bound, 400)  # the served model loads it before it is bound: no request ever tries
    assert error["code"] == "invalid_adapter" and "adapter" in error["message"].lower()
    assert served.admin("GET", f"/admin/tenants/{name}/adapters").json()["data"] == []
    unbound = error_of(post(served, key, {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "lora": "nothing"}), 400)
    assert unbound["param"] == "lora"


def test_health_is_liveness_only_without_the_admin_key(served, key):
    assert httpx.get(served.url + "/health").json() == {"status": "ok"}
    tenant_asks = httpx.get(served.url + "/health", headers={"Authorization": f"Bearer {key}"})
    assert tenant_asks.json() == {"status": "ok"}
    admin = httpx.get(served.url + "/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert admin["in_flight"] == 0 and admin["model"] == MODEL
    assert httpx.get(served.url + "/admin/health").status_code == 401


def test_other_requests_are_unchanged_after_every_attack(served, key):
    done = served.client(key).completions.create(model=MODEL, prompt=FRANCE["prompt"], max_tokens=8, temperature=0)
    assert FRANCE["greedy_text"].startswith(done.choices[0].text) and done.choices[0].text.startswith(" Paris")
    assert "Traceback" not in served.log.read_text()


# --- shutdown (a server of its own) ---------------------------------------------------------------

def test_a_stream_cut_by_shutdown_ends_with_an_error_event_not_done(tmp_path):
    with serving(tmp_path, "--drain-timeout", "1") as server:
        key = server.tenant("main")
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0, "stream": True}
        whole: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: whole.append(post(server, key, {**body, "stream": False})))
        waiting.start()
        events: list[str] = []
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:
                        server.proc.send_signal(signal.SIGTERM)
        assert events[-1] != "[DONE]"
        error = json.loads(events[-1])["error"]
        assert error["code"] == "server_shutdown" and "incomplete" in error["message"]
        waiting.join(timeout=120)
        assert error_of(whole[0], 503)["code"] == "server_shutdown"  # a whole answer cut short: 503, not 200
        assert server.proc.wait(timeout=60) == -signal.SIGTERM
        with pytest.raises(openai.APIConnectionError):
            server.client(key).completions.create(model=MODEL, prompt="Hi", max_tokens=1)
