"""Routing of `realm serve --replicas` (realm/cluster/routing.py): rendezvous hashing of the tenant's
key hash over the running replicas, and the replica header on every response."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from realm.cluster.header import with_replica_header
from realm.cluster.routing import REPLICA_HEADER, header, key_hash, ranked, tenant_of

REPLICAS = ["mqe53osb", "7alwjgqw", "l2xfbc2w", "x0a9k2mb"]
KEYS = [key_hash(f"rk-tenant-{i}") for i in range(2000)]


def test_a_key_is_known_only_by_its_sha256():
    key = "rk-b428a73b--vEfaPx1okNdT5ANyQ8rmMuU5rSSnDbA4JF8"
    assert tenant_of([(b"Authorization", f"Bearer {key}".encode())]) == hashlib.sha256(key.encode()).hexdigest()
    assert tenant_of([(b"authorization", f"bearer  {key} ".encode())]) == key_hash(key)
    assert tenant_of([(b"authorization", b"Basic abc")]) is None
    assert tenant_of([(b"authorization", b"Bearer ")]) is None
    assert tenant_of([]) is None


def test_a_header_is_found_whatever_its_case():
    assert header([(b"X-Realm-Replica", b"abc")], REPLICA_HEADER) == "abc"
    assert header([(b"x-other", b"abc")], REPLICA_HEADER) is None


def test_the_order_is_stable_and_the_same_whatever_order_the_replicas_come_in():
    for key in KEYS[:50]:
        first = ranked(key, REPLICAS)
        assert sorted(first) == sorted(REPLICAS)
        assert ranked(key, list(reversed(REPLICAS))) == first == ranked(key, REPLICAS)


def test_tenants_spread_over_the_replicas():
    counts = Counter(ranked(key, REPLICAS)[0] for key in KEYS)
    assert set(counts) == set(REPLICAS)
    expected = len(KEYS) / len(REPLICAS)
    assert all(abs(n - expected) < 0.2 * expected for n in counts.values()), counts


def test_only_a_dead_replicas_tenants_move_and_they_go_to_their_second_choice():
    dead = REPLICAS[1]
    alive = [r for r in REPLICAS if r != dead]
    moved = 0
    for key in KEYS:
        before, after = ranked(key, REPLICAS), ranked(key, alive)
        if before[0] == dead:
            moved += 1
            assert after[0] == before[1]
        else:
            assert after[0] == before[0]
    assert moved > 0
    # and they spread over the survivors instead of all landing on one
    assert len({ranked(k, alive)[0] for k in KEYS if ranked(k, REPLICAS)[0] == dead}) == len(alive)


def test_a_replacement_replica_takes_tenants_from_every_other_replica_only_for_itself():
    grown = [*REPLICAS, "n3w1d000"]
    for key in KEYS:
        before, after = ranked(key, REPLICAS)[0], ranked(key, grown)[0]
        assert after in (before, "n3w1d000")


def _app() -> Starlette:
    async def whole(request):
        return JSONResponse({"ok": True}, status_code=418)

    async def stream(request):
        async def chunks():
            for i in range(3):
                yield f"data: {i}\n\n"
                await asyncio.sleep(0)
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def crash(request):
        raise RuntimeError("boom")

    return Starlette(routes=[Route("/whole", whole), Route("/stream", stream), Route("/crash", crash)])


def test_every_response_names_the_replica_errors_and_streams_included():
    client = TestClient(with_replica_header(_app(), "r1"), raise_server_exceptions=False)
    for path, status in (("/whole", 418), ("/stream", 200), ("/crash", 500), ("/missing", 404)):
        response = client.get(path)
        assert response.status_code == status
        assert response.headers[REPLICA_HEADER] == "r1", path
    assert client.get("/stream").text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
