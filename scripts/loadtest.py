#!/usr/bin/env python3
"""Load-test `realm serve` on loopback: concurrent openai clients across tenants, streaming and not.

    python scripts/loadtest.py                       # 16 clients, 4 tenants, 60 s, its own server
    python scripts/loadtest.py --duration 20 --max-requests 64 --baseline --json

By default it starts its own `realm serve` (a temporary REALM_HOME, one tenant and key per
tenant made through the admin API) on a free loopback port, and stops it at the end; `--url` with
`--keys` targets a running server instead, which must be on loopback. Bounded: no request starts
after --duration seconds or once --max-requests have started, and each has a timeout.

Reports requests, errors, throughput (requests/s and completion tokens/s), latency p50/p99 and
time to first token p50/p99 (streamed requests). `--baseline` then runs the same workload in this
process straight through the sandbox (the reference guest on as many threads as the server had
workers, no HTTP) for the same time, and reports the server's tok/s as a ratio to it.

`--llama-server` then runs the same workload (prompts, sampling, clients, duration, request budget)
against llama.cpp's own `llama-server` with as many slots as clients (continuous batching) on the
same model and threads, on loopback, and reports both side by side with Realm's ratios
(`realm_vs_llama_server`: completion tok/s, latency and TTFT p50/p99). llama.cpp is found through
$PEER_BIN or built once (scripts/llama_peer.py). Compare on `--backend cpu`:

    python scripts/loadtest.py --backend cpu --threads 2 --duration 60 --max-tokens 64 --llama-server

`--flood` measures isolation (docs/isolation.md) instead: tenant load0 floods (`--flood-clients`
threads, each sending `n=8` requests of a long prompt back to back) beside three well-behaved tenants
(`--clients` threads each, short prompts). Each well-behaved tenant first runs alone, then all run
beside the flood, each phase for --duration seconds; the report gives each one's completion tok/s
and p95 latency beside the flood as ratios to its solo run, and the flooder's answered and refused
requests and tok/s:

    python scripts/loadtest.py --flood --clients 1 --duration 20 --backend cpu --server-workers 4
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import openai

from host_functions.errors import RealmError
from realm.models import load_model, resolve_model_path
from realm.request.spec import RunRequest
from realm.sandbox.intake import reference_guest

sys.path.insert(0, str(Path(__file__).parent))  # llama_peer, next to this script, also when imported
import llama_peer  # noqa: E402
import multiturn  # noqa: E402

REALM = str(Path(sys.executable).with_name("realm"))
PROMPTS = ("Once upon a time", "The capital of France is", "Here is a list of fruits:", "def fibonacci(n):",
           "The weather today", "In 1492, Columbus")


@dataclass
class Sample:
    tenant: str
    stream: bool
    ok: bool
    seconds: float
    ttft: float | None = None
    tokens: int = 0
    error: str = ""


@dataclass
class Workload:
    clients: int
    duration: float
    max_requests: int
    max_tokens: int
    started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, deadline: float) -> int | None:
        """The number of the next request, or None once the time or the request budget is spent."""
        with self.lock:
            if time.monotonic() >= deadline or self.started >= self.max_requests:
                return None
            self.started += 1
            return self.started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds during which requests start")
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0, help="per request")
    parser.add_argument("--server-workers", type=int, default=0,
                        help="the server's --workers (guest runs at once; the rest queue); default --clients")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--model", default=None)
    parser.add_argument("--url", help="a running server (loopback only); needs --keys")
    parser.add_argument("--keys", help="comma-separated tenant keys for --url")
    parser.add_argument("--baseline", action="store_true", help="also run the workload in-process, no HTTP")
    parser.add_argument("--threads", type=int, default=0,
                        help="kernel threads of the server (and of llama-server); default every CPU")
    parser.add_argument("--llama-server", action="store_true",
                        help="also run the workload against llama.cpp's llama-server, side by side")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --llama-server: rounds of both, alternating; each side's best counts")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--flood", action="store_true", help="one flooding tenant beside three well-behaved ones")
    parser.add_argument("--flood-clients", type=int, default=8, help="the flooder's concurrent requests (--flood)")
    parser.add_argument("--multi-turn", action="store_true",
                        help="multi-turn chat per tenant, with and without the prefix cache (scripts/multiturn.py)")
    parser.add_argument("--turns", type=int, default=8, help="turns per conversation (--multi-turn)")
    parser.add_argument("--document-sections", type=int, default=8,
                        help="size of each tenant's system document, ~37 tokens a section (--multi-turn)")
    args = parser.parse_args(argv)
    if args.flood:
        return flood_main(args)
    if args.multi_turn:
        report = multiturn.multi_turn_main(args, lambda off: OwnServer(args, ["--no-prefix-cache"] if off else []))
        print(json.dumps(report, indent=None if args.json else 2))
        return 0
    if not 1 <= args.clients <= 256 or not 1 <= args.tenants <= args.clients:
        parser.error("need 1 <= --tenants <= --clients <= 256")
    work = Workload(args.clients, args.duration, args.max_requests, args.max_tokens)

    if args.url:
        if not args.keys:
            parser.error("--url needs --keys")
        _require_loopback(args.url)
        report = run_load(args.url, args.keys.split(","), work, args.timeout, _model_id(args.url, args.keys))
    else:
        report = own_server_phase(args, work)
    if args.baseline:
        print(f"loadtest: server phase done: {json.dumps(report)}", file=sys.stderr, flush=True)
        report["baseline"] = run_baseline(args, Workload(args.clients, args.duration, args.max_requests,
                                                          args.max_tokens))
        direct = report["baseline"]["completion_tok_s"]
        report["server_vs_direct_tok_s"] = round(report["completion_tok_s"] / direct, 3) if direct else None
    if args.llama_server:
        report = against_llama_server(args, report)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0 if report["errors"] == 0 else 1


def own_server_phase(args: argparse.Namespace, work: Workload) -> dict:
    """The workload against a `realm serve` of this script's own; with its scheduler's figures
    (`engine`: steps, mean and largest batch) read from /metrics at the end."""
    server = OwnServer(args)
    with server as (url, keys):
        report = run_load(url, keys, work, args.timeout, _model_id(url, keys[0]))
        report["engine"] = server.engine_figures()
    return report


# --- the server ------------------------------------------------------------------------------

class OwnServer:
    """A `realm serve` subprocess with `tenants` tenants and keys, on a free loopback port."""

    def __init__(self, args: argparse.Namespace, serve_options: list[str] | None = None) -> None:
        self.args, self.serve_options = args, serve_options or []
        self.home = tempfile.TemporaryDirectory(prefix="realm-loadtest-")
        self.admin = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> tuple[str, list[str]]:
        port = _free_port()
        env = {**os.environ, "REALM_HOME": self.home.name, "REALM_ADMIN_KEY": self.admin}
        cmd = [REALM, "serve", "--port", str(port), "--backend", self.args.backend,
               "--workers", str(self.args.server_workers or self.args.clients), "--requests-per-minute", "0",
               "--tokens-per-minute", "0", *self.serve_options]
        if self.args.model:
            cmd += ["--model", self.args.model]
        if self.args.threads:
            cmd += ["--threads", str(self.args.threads)]
        self.log = open(Path(self.home.name) / "server.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        url = self.url = f"http://127.0.0.1:{port}"
        _wait_up(url, self.proc)
        headers = {"Authorization": f"Bearer {self.admin}"}
        keys = []
        for i in range(self.args.tenants):
            httpx.post(f"{url}/admin/tenants", json={"name": f"load{i}"}, headers=headers).raise_for_status()
            made = httpx.post(f"{url}/admin/tenants/load{i}/keys", headers=headers)
            made.raise_for_status()
            keys.append(made.json()["key"])
        return url, keys

    def engine_figures(self, which: str = "scheduler") -> dict[str, float]:
        """The realm_engine_<which>* gauges of the server's /metrics (default: the scheduler's steps and
        batch sizes; "prefix_cache": its hit rate and bytes), of its one model (the label dropped)."""
        text = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {self.admin}"}).text
        pairs = (line.split() for line in text.splitlines() if line.startswith(f"realm_engine_{which}"))
        return {name.split("{")[0].removeprefix("realm_engine_"): round(float(value), 3) for name, value in pairs}

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=120)
        self.log.close()
        self.home.cleanup()


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 300, name: str = "realm serve") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"loadtest: {name} exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit(f"loadtest: {name} did not come up")


def _require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"loadtest: {url} is not a loopback address; this tool only loads local servers")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_id(url: str, key: str) -> str:
    return openai.OpenAI(base_url=url + "/v1", api_key=key.split(",")[0]).models.list().data[0].id


# --- the load --------------------------------------------------------------------------------

def run_load(url: str, keys: list[str], work: Workload, timeout: float, model: str) -> dict:
    """`work.clients` threads, client i on tenant i % len(keys), alternating streamed and plain."""
    samples: list[Sample] = []
    deadline = time.monotonic() + work.duration

    def client(i: int) -> None:
        api = openai.OpenAI(base_url=url + "/v1", api_key=keys[i % len(keys)], max_retries=0, timeout=timeout)
        tenant = f"tenant{i % len(keys)}"
        while (n := work.take(deadline)) is not None:
            samples.append(_one(api, model, tenant, n, stream=(n + i) % 2 == 0, max_tokens=work.max_tokens))

    started = time.monotonic()
    _run_threads(work.clients, client)
    return summarize(samples, time.monotonic() - started)


def _one(api: openai.OpenAI, model: str, tenant: str, n: int, stream: bool, max_tokens: int) -> Sample:
    prompt = PROMPTS[n % len(PROMPTS)]
    t0 = time.perf_counter()
    try:
        if not stream:
            done = api.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.8, seed=n)
            tokens = done.usage.completion_tokens if done.usage is not None else 0  # Realm always reports usage
            return Sample(tenant, False, True, time.perf_counter() - t0, None, tokens)
        ttft, tokens = None, 0
        for chunk in api.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.8,
                                            seed=n, stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].text and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return Sample(tenant, True, True, time.perf_counter() - t0, ttft, tokens)
    except openai.APIError as exc:
        return Sample(tenant, stream, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")


def _run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def summarize(samples: list[Sample], seconds: float) -> dict:
    ok = [s for s in samples if s.ok]
    tokens = sum(s.tokens for s in ok)
    ttfts = [s.ttft for s in ok if s.ttft is not None]
    return {
        "requests": len(samples), "ok": len(ok), "errors": len(samples) - len(ok),
        "error_examples": sorted({s.error for s in samples if not s.ok})[:3],
        "streamed": sum(s.stream for s in ok), "seconds": round(seconds, 2),
        "requests_per_s": round(len(ok) / seconds, 3), "completion_tokens": tokens,
        "completion_tok_s": round(tokens / seconds, 2),
        "latency_p50_s": _pct([s.seconds for s in ok], 50), "latency_p99_s": _pct([s.seconds for s in ok], 99),
        "ttft_p50_s": _pct(ttfts, 50), "ttft_p99_s": _pct(ttfts, 99),
        "per_tenant_ok": {t: sum(1 for s in ok if s.tenant == t) for t in sorted({s.tenant for s in samples})},
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 3)


# --- the same work against llama.cpp's server ----------------------------------------------

def run_llama_server(args: argparse.Namespace) -> dict:
    """The workload against `llama-server` with one slot per client, same model and threads."""
    model = str(resolve_model_path(args.model))
    port = _free_port()
    threads = args.threads or len(os.sched_getaffinity(0))
    cmd = llama_peer.server_command(llama_peer.peer_bin(), model, port, args.clients, threads,
                                    ctx_per_slot=max(512, 2 * args.max_tokens + 64))
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT) as proc:
        try:
            _wait_up(url, proc, name="llama-server")
            return run_load(url, ["no-key"], _workload(args), args.timeout, _model_id(url, "no-key"))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def against_llama_server(args: argparse.Namespace, first: dict) -> dict:
    """llama-server after Realm's phase `first`, then (--rounds) Realm and llama-server again,
    alternating; the round with the most completion tok/s counts for each."""
    if args.url and args.rounds > 1:
        raise SystemExit("loadtest: --rounds starts its own realm serve each round; drop --url")
    ours, theirs = [first], []
    for round_no in range(args.rounds):
        if round_no:
            ours.append(own_server_phase(args, _workload(args)))
        print(f"loadtest: realm round done: {json.dumps(ours[-1])}", file=sys.stderr, flush=True)
        theirs.append(run_llama_server(args))
        print(f"loadtest: llama-server round done: {json.dumps(theirs[-1])}", file=sys.stderr, flush=True)
    report = side_by_side(max(ours, key=_tok_s), max(theirs, key=_tok_s))
    report["rounds"] = {"realm_tok_s": [r["completion_tok_s"] for r in ours],
                        "llama_server_tok_s": [r["completion_tok_s"] for r in theirs]}
    return report


def _tok_s(report: dict) -> float:
    return report["completion_tok_s"]


def _workload(args: argparse.Namespace) -> Workload:
    return Workload(args.clients, args.duration, args.max_requests, args.max_tokens)


def side_by_side(realm: dict, llama: dict) -> dict:
    """Both reports, and Realm's figures over llama-server's (tok/s: above 1 Realm is faster; times:
    below 1 Realm is quicker)."""
    keys = ("completion_tok_s", "latency_p50_s", "latency_p99_s", "ttft_p50_s", "ttft_p99_s")
    ratios = {k: round(realm[k] / llama[k], 3) if realm.get(k) and llama.get(k) else None for k in keys}
    return {"realm": realm, "llama_server": llama, "realm_vs_llama_server": ratios,
            "errors": realm["errors"] + llama["errors"]}


# --- a flood beside well-behaved tenants --------------------------------------------------------

FLOOD_PROMPT = "Tell me everything about the history of the world, in detail. " * 40  # about 500 tokens


def flood_main(args: argparse.Namespace) -> int:
    args.tenants = 4
    with OwnServer(args) as (url, keys):
        model = _model_id(url, keys[0])
        benign = {f"load{i}": keys[i] for i in (1, 2, 3)}
        solo = {name: _benign_phase(url, {name: key}, args, model)[name] for name, key in benign.items()}
        flooded = _benign_phase(url, benign, args, model, flood_key=keys[0])
    report: dict = {"solo": solo, "beside_flood": flooded, "ratios": {}}
    for name in benign:
        before, after = solo[name], flooded[name]
        report["ratios"][name] = {
            "tok_s_vs_solo": round(after["completion_tok_s"] / before["completion_tok_s"], 3)
            if before["completion_tok_s"] else None,
            "p95_vs_solo": round(after["latency_p95_s"] / before["latency_p95_s"], 3)
            if before["latency_p95_s"] and after["latency_p95_s"] else None}
    print(json.dumps(report, indent=None if args.json else 2))
    return 0 if all(flooded[name]["errors"] == 0 for name in benign) else 1


def _benign_phase(url: str, keys: dict[str, str], args: argparse.Namespace, model: str,
                  flood_key: str | None = None) -> dict[str, dict]:
    """Each tenant of `keys` on --clients threads for --duration s (beside the flood if flood_key)."""
    samples: dict[str, list[Sample]] = {name: [] for name in keys}
    ended: dict[str, float] = {}  # when each tenant's last request ended: its own time, not the flood's tail
    flood: list[Sample] = []
    deadline = time.monotonic() + args.duration
    names = list(keys)
    n_benign = args.clients * len(names)

    def client(i: int) -> None:
        if i >= n_benign:
            _flood_client(url, flood_key or "", model, deadline, args.timeout, flood)
            return
        name = names[i % len(names)]
        api = openai.OpenAI(base_url=url + "/v1", api_key=keys[name], max_retries=0, timeout=args.timeout)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            samples[name].append(_one(api, model, name, n, stream=False, max_tokens=args.max_tokens))
        ended[name] = max(ended.get(name, 0.0), time.monotonic())

    started = time.monotonic()
    _run_threads(n_benign + (args.flood_clients if flood_key else 0), client)
    seconds = time.monotonic() - started
    out = {name: {**summarize(got, ended[name] - started), "latency_p95_s": _pct([s.seconds for s in got if s.ok], 95)}
           for name, got in samples.items()}
    if flood_key:
        out["load0 (flood)"] = {**summarize(flood, seconds), "refused": sum(1 for s in flood if not s.ok)}
    return out


def _flood_client(url: str, key: str, model: str, deadline: float, timeout: float, out: list[Sample]) -> None:
    """Requests of n=8 long prompts, back to back; a refusal (503, 429) is counted and retried 50 ms later."""
    api = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout)
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            done = api.completions.create(model=model, prompt=FLOOD_PROMPT, max_tokens=32, n=8, temperature=0.8)
            tokens = done.usage.completion_tokens if done.usage is not None else 0
            out.append(Sample("load0", False, True, time.perf_counter() - t0, None, tokens))
        except openai.APIError as exc:
            out.append(Sample("load0", False, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"))
            time.sleep(0.05)  # a refused flooder does not spin the event loop


# --- the same work without the server --------------------------------------------------------

def run_baseline(args: argparse.Namespace, work: Workload) -> dict:
    """The workload straight through the sandbox, on as many threads as the server had workers."""
    model = load_model(args.model, args.backend)
    guest = reference_guest()
    samples: list[Sample] = []
    deadline = time.monotonic() + work.duration

    def client(i: int) -> None:
        tenant = f"tenant{i % args.tenants}"
        while (n := work.take(deadline)) is not None:
            request = RunRequest({"prompt": PROMPTS[n % len(PROMPTS)], "max_tokens": work.max_tokens,
                                  "temperature": 0.8, "seed": n}, guest, tenant=tenant)
            t0 = time.perf_counter()
            try:
                result = request.run(model)
            except RealmError as exc:
                samples.append(Sample(tenant, False, False, time.perf_counter() - t0, error=str(exc)))
                continue
            samples.append(Sample(tenant, False, True, time.perf_counter() - t0, None, result.completion_tokens or 0))

    started = time.monotonic()
    _run_threads(args.server_workers or args.clients, client)
    return summarize(samples, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
