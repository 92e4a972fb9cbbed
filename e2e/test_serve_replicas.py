"""`realm serve --replicas N` on a real Ray instance, as a user drives it: the CLI in a subprocess,
the official `openai` client and httpx against Ray Serve's HTTP proxy, on a tiny model.

The module starts one Ray instance (this test process is its driver, with Ray's dashboard for the
state API: `ray.util.state.list_actors` finds a replica's pid) and `realm serve --replicas 2
--ray-address` on it; the registry every replica shares is the `registry` fixture's (a SQLite file
under a temporary REALM_HOME, or a database on a real PostgreSQL server). One test starts a local Ray
of `realm serve`'s own, with and without `--ray-dashboard`, and checks it leaves no process of it behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import ray
from cli_helpers import one_error_line
from conftest import REALM
from oracle import ARCHS, DATA
from ray.util.state import list_actors
from test_serve import ADMIN_KEY, free_port, serving
from test_serve_models import CASES

MODEL_FILE = DATA / "tiny-llama-Q4_K.gguf"
MODEL = MODEL_FILE.stem
QWEN = CASES[0]  # a second model every replica serves, named by --model NAME=PATH
REPLICA = "x-realm-replica"
PROMPT = "Once upon a time"
START_S = 240  # Ray's proxy and two replicas loading the model, on a loaded 2-core machine


@dataclass
class Replicas:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen
    log: Path

    def admin(self, method: str, path: str, replica: str | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", **({REPLICA: replica} if replica else {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def tenant(self, name: str) -> str:
        """A tenant made through the admin API (whichever replica the admin's key lands on); its key."""
        assert self.admin("POST", "/admin/tenants", json={"name": name}).status_code == 201
        made = self.admin("POST", f"/admin/tenants/{name}/keys")
        assert made.status_code == 201, made.text
        return made.json()["key"]

    def complete(self, key: str, retries: int = 0, max_tokens: int = 12) -> tuple[str, str]:
        """A greedy completion of PROMPT for `key`: (its text, the replica that served it)."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=retries, timeout=120)
        raw = client.completions.with_raw_response.create(model=MODEL, prompt=PROMPT, max_tokens=max_tokens,
                                                          temperature=0)
        return raw.parse().choices[0].text, raw.headers[REPLICA]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A Ray instance of this test module (2 CPUs, the dashboard for the state API); the address to
    give `--ray-address`. Stopped (every process it started) after the module."""
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
             object_store_memory=128 << 20, _temp_dir=temp, log_to_driver=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment naming the registry every replica shares: a SQLite file under REALM_HOME, or a
    database of its own on the session's real PostgreSQL server (tests/postgres_server.py)."""
    home = {"REALM_HOME": str(tmp_path_factory.mktemp("registry") / "home")}
    if request.param == "sqlite":
        return home
    return {**home, "REALM_REGISTRY_URL": request.getfixturevalue("postgres").new_database()}


def _env(registry: dict[str, str]) -> dict[str, str]:
    """A user's environment: without RAY_AUTH_MODE, which this process's ray.init set (so `realm serve`
    must send the token of the module's Ray, on this machine, itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return {**env, **registry, "REALM_ADMIN_KEY": ADMIN_KEY, "PYTHONUNBUFFERED": "1"}


def _start(env: dict[str, str], log: Path, *options: str) -> Replicas:
    """`realm serve --replicas ...` on a free port, once it says every replica serves."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([REALM, "serve", "--port", str(port), "--backend", "cpu", "--model", str(MODEL_FILE),
                                 "--model", f"{QWEN.model}={ARCHS / 'tiny-qwen2-F16.gguf'}",
                                 "--workers", "4", "--threads", "1", "--drain-timeout", "30", *options],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_S
    while "replica(s) of" not in log.read_text():
        assert proc.poll() is None, f"realm serve exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"realm serve did not come up: {log.read_text()}"
        time.sleep(0.3)
    return Replicas(f"http://127.0.0.1:{port}", env, proc, log)


def _stop(replicas: Replicas) -> None:
    replicas.proc.send_signal(signal.SIGTERM)
    assert replicas.proc.wait(timeout=120) == -signal.SIGTERM, replicas.log.read_text()


@pytest.fixture(scope="module")
def served(ray_address: str, registry: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    replicas = _start(_env(registry), tmp_path_factory.mktemp("replicas") / "serve.log", "--replicas", "2",
                      "--ray-address", ray_address)
    try:
        yield replicas
    finally:
        if replicas.proc.poll() is None:
            _stop(replicas)


@pytest.fixture(scope="module")
def tenants(served: Replicas) -> dict[str, tuple[str, str]]:
    """Tenants made through the admin API until both replicas have one: name -> (key, its replica)."""
    made: dict[str, tuple[str, str]] = {}
    for i in range(24):  # rendezvous hashing puts each on either replica with even odds
        key = served.tenant(f"t{i}")
        made[f"t{i}"] = (key, served.complete(key)[1])
        if len({replica for _, replica in made.values()}) == 2:
            break
    return made


def _replica_actors() -> dict[str, int]:
    """The alive replicas' ids and pids, from Ray's state API (actor name: SERVE_REPLICA::app#deployment#id)."""
    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.name.rsplit("#", 1)[-1]: a.pid for a in actors if a.name and a.name.startswith("SERVE_REPLICA::realm#")}


def test_both_replicas_serve_and_each_tenant_stays_on_its_own(served, tenants):
    assert len({replica for _, replica in tenants.values()}) == 2, tenants
    assert set(_replica_actors()) == {replica for _, replica in tenants.values()}
    for key, replica in tenants.values():
        assert {served.complete(key)[1] for _ in range(3)} == {replica}


def test_every_response_names_its_replica_errors_health_and_streams_included(served, tenants):
    key, replica = next(iter(tenants.values()))
    refused = httpx.get(served.url + "/v1/models", headers={"Authorization": "Bearer rk-nobody"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert refused.headers[REPLICA] in _replica_actors()
    assert httpx.get(served.url + "/health").headers[REPLICA] in _replica_actors()
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as stream:
        assert stream.headers[REPLICA] == replica
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3
    streamed = openai.OpenAI(base_url=served.url + "/v1", api_key=key, timeout=120).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == served.complete(key)[0]
    # Not buffered by the proxy: the first text arrives while the replica is still generating the rest.
    body = {**body, "max_tokens": 480, "prompt": "Hi", "logit_bias": {"2": -100}}  # 2: its end of text
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as stream:
        lines = stream.iter_lines()
        while '"text": ""' in (line := next(lines)) or not line.startswith("data: "):
            pass  # the opening chunk (no text yet) and the blank lines between events
        assert served.admin("GET", "/admin/health", replica=replica).json()["in_flight"] == 1, line


def test_replicas_serve_every_model_of_the_flags_as_llama_cpp_does(served, tenants):
    key, replica = next(iter(tenants.values()))
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=key, timeout=120)
    assert {m.id for m in client.models.list()} == {MODEL, QWEN.model}
    raw = client.completions.with_raw_response.create(model=QWEN.model, prompt=QWEN.prompt, max_tokens=1,
                                                      temperature=0, logprobs=1)
    done = raw.parse()
    assert raw.headers[REPLICA] == replica and done.usage.prompt_tokens == QWEN.n_tokens
    assert done.choices[0].logprobs.token_logprobs[0] == pytest.approx(QWEN.log_softmax.max(), abs=1e-2)


def test_the_answer_is_the_one_plain_realm_serve_gives(served, tenants, tmp_path):
    key, _ = next(iter(tenants.values()))
    text, _ = served.complete(key)
    with serving(tmp_path, "--model", str(MODEL_FILE)) as plain:
        plain_key = plain.tenant("plain")
        theirs = plain.client(plain_key).completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    assert text == theirs.choices[0].text and text


def test_the_admin_picks_a_replica_and_reads_its_own_metrics(served, tenants):
    ids = sorted(_replica_actors())
    for replica in ids:
        health = served.admin("GET", "/admin/health", replica=replica)
        assert health.status_code == 200 and health.headers[REPLICA] == replica
        metrics = served.admin("GET", "/metrics", replica=replica)
        assert metrics.status_code == 200 and metrics.headers[REPLICA] == replica
    # Each replica counts only the requests it served: a tenant's appear on its replica's alone.
    name, (key, home) = next(iter(tenants.items()))
    served.complete(key)
    for replica in ids:
        counted = f'tenant="{name}"' in served.admin("GET", "/metrics", replica=replica).text
        assert counted == (replica == home), replica
    # A tenant cannot pick a replica: its header is ignored.
    other = next(r for r in ids if r != home)
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=key, timeout=120, default_headers={REPLICA: other})
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert raw.headers[REPLICA] == home


def test_a_second_deployment_on_the_same_cluster_is_refused_and_the_first_keeps_serving(served, tenants, realm,
                                                                                       ray_address):
    done = realm("serve", "--replicas", "1", "--ray-address", ray_address, "--model", str(MODEL_FILE),
                 "--port", str(free_port()), timeout=120)
    one_error_line(done, 1, "Realm is already deployed on this Ray cluster")
    key, replica = next(iter(tenants.values()))
    assert served.complete(key)[1] == replica


def test_a_killed_replica_is_replaced_and_its_tenants_are_served_with_retries(served, tenants):
    victim = next(replica for _, replica in tenants.values())
    actors = _replica_actors()
    os.kill(actors[victim], signal.SIGKILL)
    for key, replica in tenants.values():
        for _ in range(3):
            text, now = served.complete(key, retries=8)
            assert text
            # only the dead replica's tenants move, and they do
            assert now == replica if replica != victim else now != victim
    deadline = time.monotonic() + START_S
    while len(alive := _replica_actors()) < 2 or victim in alive:
        assert time.monotonic() < deadline, f"Ray did not replace replica {victim}: {alive}"
        time.sleep(1)
    for replica in alive:
        assert served.admin("GET", "/admin/health", replica=replica).json()["status"] == "ok"


def test_a_restarted_deployment_serves_the_same_tenants_and_keys(served, tenants, ray_address, tmp_path):
    _stop(served)
    assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2  # a cluster it joined is left running
    # Once after a SIGTERM, once after a SIGKILL of `realm serve`: the deployment a killed one left behind
    # (still serving, on its port) is taken over, on the new port.
    for restart, stop in (("sigterm", signal.SIGKILL), ("sigkill", signal.SIGTERM)):
        again = _start(served.env, tmp_path / f"after-{restart}.log", "--replicas", "2", "--ray-address", ray_address)
        try:
            for key, _ in tenants.values():
                assert again.complete(key, retries=4)[0]
            assert again.tenant(f"after-{restart}")
        finally:
            again.proc.send_signal(stop)
            assert again.proc.wait(timeout=120) == -stop, again.log.read_text()


def test_a_replica_that_cannot_build_its_server_is_one_error_line(realm, ray_address):
    done = realm("serve", "--replicas", "1", "--ray-address", ray_address, "--model", str(MODEL_FILE),
                 "--chat-template", "/nonexistent.jinja", "--port", str(free_port()), timeout=180)
    one_error_line(done, 1, "the replicas did not start", "ChatTemplateError", "/nonexistent.jinja")
    assert ray.cluster_resources().get("CPU") == 2  # the cluster it joined still runs


@pytest.mark.parametrize("dashboard", [False, True], ids=["no-dashboard", "ray-dashboard"])
def test_a_local_ray_of_its_own_drains_on_sigterm_and_leaves_nothing_behind(dashboard, tmp_path):
    temp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    env = {**_env({}), "RAY_TMPDIR": temp, "REALM_HOME": str(tmp_path / "home")}
    served = _start(env, tmp_path / "local.log", "--replicas", "1", "--workers", "1",
                    *(["--ray-dashboard"] if dashboard else []))
    try:
        dashboard_url = _dashboard_url(served.log.read_text())
        assert (dashboard_url is not None) == dashboard
        if dashboard_url is not None:  # Ray's state API finds the replica, as on a cluster of `ray start`
            assert _replica_pids_listed_by_ray_cli(dashboard_url)
        ray_pids = _descendants(_pids_naming(temp))  # dashboard modules included: they do not name it
        key = served.tenant("drained")
        answers: list[str] = []
        clients = [threading.Thread(target=lambda: answers.append(served.complete(key, max_tokens=400)[0]))
                   for _ in range(4)]  # one worker: they queue, so the drain has work to wait for
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while served.admin("GET", "/admin/health").json()["in_flight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        served.proc.send_signal(signal.SIGTERM)
        assert len(answers) < 4  # the drain has requests to wait for
        for client in clients:
            client.join(timeout=180)
        assert len(answers) == 4 and all(answers)
        assert served.proc.wait(timeout=120) == -signal.SIGTERM
        deadline = time.monotonic() + 60  # the dashboard's modules end a few seconds after their head
        while left := _pids_naming(temp) | (ray_pids & _descendants(set())):
            assert time.monotonic() < deadline, f"Ray processes of realm serve are still running: {left}"
            time.sleep(0.5)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_the_cluster_of_ray_start_on_this_machine_is_joined_and_its_token_sent(tmp_path):
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # its own RAY_TMPDIR: Ray's record of `ray start` is there
    # A user's shell: the cluster's token at hand (RAY_AUTH_TOKEN), RAY_AUTH_MODE unset (_env); the cluster
    # wants the token whatever this machine's environment says.
    env = {**_env({}), "RAY_TMPDIR": temp, "REALM_HOME": str(tmp_path / "home"),
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = free_port()
    started = subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(port),
                              "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats"],
                             env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        served = _start(env, tmp_path / "joined.log", "--replicas", "1")
        assert re.search(rf"on the Ray cluster of `ray start` at [\d.]+:{port}\)", served.log.read_text())
        assert served.complete(served.tenant("joined"))[0]
        _stop(served)
        assert _pids_naming(temp), "the cluster of `ray start` was stopped with realm serve"
        # Told not to send the token (the user's word), `realm serve` is refused: one line saying why.
        refused = subprocess.run([REALM, "serve", "--replicas", "1", "--ray-address", f"127.0.0.1:{port}", "--model",
                                  str(MODEL_FILE), "--port", str(free_port())],
                                 env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=120)
        one_error_line(refused, 1, f"cannot reach the Ray cluster at 127.0.0.1:{port}", "it wants Ray's token",
                       "RAY_AUTH_MODE=token")
    finally:
        _end(_descendants(_pids_naming(temp)))
        shutil.rmtree(temp, ignore_errors=True)


def _end(pids: set[int]) -> None:
    """SIGTERM to `pids`, SIGKILL to those left after 10 s (`ray stop` would stop every Ray on the machine)."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while (pids := pids & _descendants(set())) and time.monotonic() < deadline:
            time.sleep(0.2)


def _dashboard_url(log: str) -> str | None:
    """The dashboard URL that `realm serve --replicas` announces, if it started one."""
    found = re.search(r"its dashboard on (http://[\w.:]+)", log)
    return found.group(1) if found else None


def _replica_pids_listed_by_ray_cli(dashboard_url: str) -> list[int]:
    """The alive replicas' pids, as `ray list actors` shows them in a user's shell (RAY_AUTH_MODE=token:
    Ray 2.60's local instance requires the token ray.init left in ~/.ray, and the CLI only sends
    it when told)."""
    listed = subprocess.run([str(Path(sys.executable).parent / "ray"), "list", "actors", "--address", dashboard_url,
                             "--filter", "state=ALIVE", "--format", "json", "--limit", "1000"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_AUTH_MODE": "token"})
    assert listed.returncode == 0, listed.stderr
    return [a["pid"] for a in json.loads(listed.stdout) if (a.get("name") or "").startswith("SERVE_REPLICA::realm#")]


def _pids_naming(text: str) -> set[int]:
    """The processes whose command line holds `text`."""
    return {int(pid) for pid in subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout.split()}


def _descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them (with no roots: every process now running)."""
    parents = {}
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        pid, ppid = map(int, line.split())
        parents[pid] = ppid
    if not roots:
        return set(parents)
    found = set(roots)
    while grown := {pid for pid, ppid in parents.items() if ppid in found and pid not in found}:
        found |= grown
    return found


@pytest.mark.parametrize("args,status,fragments", [
    (["--replicas", "0"], 2, ["--replicas", "0 is not in the range"]),
    (["--replicas", "2", "--ray-address", "127.0.0.1:1"], 1, ["cannot reach the Ray cluster at 127.0.0.1:1"]),
    (["--ray-address", "127.0.0.1:1"], 2, ["--ray-address is for --replicas"]),
    (["--ray-dashboard"], 2, ["--ray-dashboard is for --replicas"]),
    (["--replicas", "1", "--ray-dashboard", "--ray-address", "127.0.0.1:1"], 1,
     ["--ray-dashboard is for a local Ray instance", "127.0.0.1:1 has its own"]),
])
def test_bad_cluster_flags_are_one_error_line(realm, args, status, fragments):
    one_error_line(realm("serve", "--model", str(MODEL_FILE), "--port", str(free_port()), *args, timeout=60),
                   status, *fragments)
