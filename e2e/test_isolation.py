"""Fair shares through a real `realm serve` (docs/isolation.md): a tenant flooding the server with
many choices at once holds its places, and another tenant is still admitted and answered; the
flooder alone is refused (503 with Retry-After while over its share, 400 naming the limit for a
request it could never have admitted). Asserted on statuses and answers, never on timing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_serve import FRANCE, MODEL, Served, serving


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """2 workers and a queue of 6: 8 places, at most 7 (all but the reserve) for one tenant."""
    with serving(tmp_path_factory.mktemp("isolation"), "--workers", "2", "--max-queue", "6") as server:
        yield server


def _completion(url: str, key: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=300,
                      json={"model": MODEL, "temperature": 0, **body})


def test_a_flooding_tenant_is_refused_while_another_tenant_is_served(small):
    flood, benign = small.tenant("flood"), small.tenant("benign")
    never = _completion(small.url, flood, prompt="x", n=8, max_tokens=1)
    assert never.status_code == 400 and "at once" in never.json()["error"]["message"], never.text
    assert "max_runs" in never.json()["error"]["message"]
    body = {"model": MODEL, "prompt": "Once upon a time", "n": 7, "max_tokens": 48, "stream": True,
            "temperature": 0.8, "seed": 1}
    with httpx.stream("POST", small.url + "/v1/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {flood}"}) as stream:
        assert stream.status_code == 200  # admitted: its 7 runs hold 7 of the 8 places until they end
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        more = _completion(small.url, flood, prompt="x", max_tokens=1)
        assert more.status_code == 503 and int(more.headers["Retry-After"]) >= 1, more.text
        assert "flood" in more.json()["error"]["message"]
        served = _completion(small.url, benign, prompt=FRANCE["prompt"], max_tokens=4)
        assert served.status_code == 200, served.text
        assert served.json()["choices"][0]["text"].startswith(" Paris")
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    finished = [json.loads(line[5:])["choices"][0] for line in rest[:-1]]
    assert sum(1 for c in finished if c.get("finish_reason")) == 7


def test_set_limits_over_the_admin_api_sets_a_tenants_share(small):
    key = small.tenant("capped")
    changed = small.admin("PATCH", "/admin/tenants/capped/limits", json={"max_runs": 2, "share_weight": 3})
    assert changed.status_code == 200 and changed.json()["limits"]["max_runs"] == 2
    assert changed.json()["limits"]["share_weight"] == 3
    refused = _completion(small.url, key, prompt="x", n=3, max_tokens=1)
    assert refused.status_code == 400 and "its own limit" in refused.json()["error"]["message"], refused.text
    assert _completion(small.url, key, prompt="x", n=2, max_tokens=1).status_code == 200
    bad = small.admin("PATCH", "/admin/tenants/capped/limits", json={"share_weight": 0})
    assert bad.status_code == 400 and "share_weight" in bad.json()["error"]["message"]


def test_a_bound_adapter_that_went_bad_is_a_400_naming_its_alias_not_its_path(small, tmp_path):
    from test_serve import _random_adapter

    folder = _random_adapter(tmp_path / "host-private-folder")
    key = small.tenant("spoiled")
    bound = small.admin("PUT", "/admin/tenants/spoiled/adapters/style", json={"path": str(folder)})
    assert bound.status_code == 200, bound.text
    (folder / "adapter_config.json").write_text("[" * 5000 + "]" * 5000)  # after binding, before first use
    answer = _completion(small.url, key, prompt="x", max_tokens=1, lora="style")
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "'style'" in error["message"] and "nested deeper" in error["message"] and error["code"] == "adapter_error"
    assert str(tmp_path) not in answer.text and "host-private-folder" not in answer.text
    assert _completion(small.url, key, prompt="x", max_tokens=1).status_code == 200  # nothing else is hurt


def test_a_server_side_failure_never_shows_the_tenant_a_host_path(small):
    from test_serve import marker_guest

    key = small.tenant("lost", marker_guest("lost"))
    home = Path(small.env["REALM_HOME"])
    lost = home.parent / "lost-registry"
    lost.mkdir()
    files = [p for p in home.glob("realm.db*")]
    for path in files:
        path.rename(lost / path.name)  # the operator lost the registry: a folder stands in its place
    (home / "realm.db").mkdir()
    try:
        answer = _completion(small.url, key, prompt="x", max_tokens=1)
    finally:
        (home / "realm.db").rmdir()
        for path in files:
            (lost / path.name).rename(path)
    assert answer.status_code == 500 and str(home) not in answer.text, answer.text
    assert answer.json()["error"]["type"] == "server_error"


def test_the_unauthenticated_see_no_tenant_in_health_or_metrics(small):
    key = small.tenant("visible")
    assert _completion(small.url, key, prompt="x", max_tokens=1).status_code == 200
    health = httpx.get(small.url + "/health", timeout=30)
    assert health.json() == {"status": "ok"}
    for path, auth in (("/metrics", None), ("/metrics", key), ("/admin/health", key)):
        headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        seen = httpx.get(small.url + path, headers=headers, timeout=30)
        assert seen.status_code in (401, 403) and "visible" not in seen.text, (path, seen.text)
    assert "visible" in small.admin("GET", "/metrics").text  # the admin sees it
