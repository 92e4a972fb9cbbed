"""Two `realm serve` processes over one real PostgreSQL registry, as two replicas run: a change made
through one (a tenant created, a guest deployed, a limit changed, a key revoked) is seen by the
other within a few seconds (its caches keep registry facts for identity.TTL_S = 5 s at most), and
both write their usage records where either's admin API reads them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from cli_helpers import one_error_line
from test_serve import MODEL, Served, free_port, marker_guest, serving

SEEN_WITHIN_S = 30  # far over the 5 s the servers promise: the machine may be loaded


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, postgres) -> Iterator[tuple[Served, Served]]:
    url = postgres.new_database()
    with serving(tmp_path_factory.mktemp("replica-a"), "--registry", url, "--workers", "2") as a, \
            serving(tmp_path_factory.mktemp("replica-b"), "--registry", url, "--workers", "2") as b:
        yield a, b


def _complete(server: Served, key: str, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=300,
                      json={"model": MODEL, "prompt": "x", "max_tokens": 1, "temperature": 0, **body})


def _eventually(check: Callable[[], httpx.Response], ok: Callable[[httpx.Response], bool]) -> httpx.Response:
    deadline = time.monotonic() + SEEN_WITHIN_S
    while True:
        answer = check()
        if ok(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def test_a_tenant_made_through_one_replica_is_served_by_the_other(replicas):
    a, b = replicas
    key = a.tenant("fleet", marker_guest("from-a"))
    answer = _complete(b, key)  # b never saw this key: it reads the registry now
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "from-a", answer.text
    redeployed = a.admin("PUT", "/admin/tenants/fleet/guest", content=marker_guest("again").encode())
    assert redeployed.status_code == 200, redeployed.text
    seen = _eventually(lambda: _complete(b, key), lambda r: r.status_code == 200 and r.json()["choices"][0]["text"]
                       == "again")
    assert seen.json()["choices"][0]["text"] == "again"


def test_a_limit_changed_through_one_replica_holds_on_the_other(replicas):
    a, b = replicas
    key = a.tenant("limited", marker_guest("ok"))
    assert _complete(b, key, max_tokens=8).status_code == 200  # remembered by b from now on
    assert a.admin("PATCH", "/admin/tenants/limited/limits", json={"max_tokens": 4}).status_code == 200
    refused = _eventually(lambda: _complete(b, key, max_tokens=8), lambda r: r.status_code == 400)
    assert refused.status_code == 400 and "max_tokens" in refused.json()["error"]["message"], refused.text


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(replicas):
    a, b = replicas
    key = a.tenant("revoked")
    assert _complete(b, key).status_code == 200
    key_id = key.split("-")[1]
    assert a.admin("DELETE", f"/admin/tenants/revoked/keys/{key_id}").status_code == 200
    refused = _eventually(lambda: _complete(b, key), lambda r: r.status_code == 401)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_both_replicas_usage_is_read_through_either(replicas):
    a, b = replicas
    key = a.tenant("metered", marker_guest("m"))
    for server in (a, b, b):
        assert _complete(server, key).status_code == 200
    usage = _eventually(lambda: b.admin("GET", "/admin/tenants/metered/usage"),
                        lambda r: r.status_code == 200 and r.json()["total"]["requests"] == 3)
    assert usage.json()["total"]["requests"] == 3 and usage.json()["models"][MODEL]["succeeded"] == 3, usage.text
    assert a.admin("GET", "/admin/tenants/metered/usage?since=1h").json()["total"]["requests"] == 3
    bad = a.admin("GET", "/admin/tenants/metered/usage?since=soon")
    assert bad.status_code == 400 and "expected an age" in bad.json()["error"]["message"]
    assert a.admin("GET", "/admin/tenants/ghost/usage").status_code == 404


@pytest.mark.parametrize("url, message", [
    ("postgresql://realm:hunter2@127.0.0.1:1/realm", "tenant registry postgresql://realm:***@127.0.0.1:1/realm: "),
    ("sqlite:relative.db", "bad registry URL 'sqlite:relative.db'"),
])
def test_serve_refuses_a_bad_or_unreachable_registry_in_one_line(realm, url, message):
    done = realm("serve", "--registry", url, "--port", str(free_port()))
    one_error_line(done, 1, message)
    assert "hunter2" not in done.stdout + done.stderr
