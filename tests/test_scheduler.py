"""The scheduler: concurrent sequences batched into shared steps, fair shares between tenants,
deadlines and cancellation while waiting, waiting for KV blocks, and never waiting on a guest
that has stopped calling."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from oracle import DATA

from host_functions.engine.model import Model, StepOwner
from host_functions.engine.scheduler import Scheduler
from host_functions.errors import Overloaded, RequestCancelled
from host_functions.kv.pool import BLOCK_TOKENS

TINY = DATA / "tiny-gemma3-F32.gguf"


def _model(kv_blocks: int | None = None) -> tuple[Model, Scheduler]:
    model = Model.load(TINY, kv_memory=64 << 20, batched=True)
    if kv_blocks is not None:
        model.set_kv_memory(kv_blocks * model.backend.kv_block_bytes(BLOCK_TOKENS))
    return model, model.scheduler


def _greedy(model: Model, prompt: list[int], n: int, owner: StepOwner | None = None) -> list[np.ndarray]:
    seq = model.open_sequence(128)
    try:
        logits = [seq.step(prompt, owner)]
        for _ in range(n):
            logits.append(seq.step([int(np.argmax(logits[-1]))], owner))
        return logits
    finally:
        seq.close()


def _in_threads(*targets) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def _steps_submitted(scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released each time a step is handed to `scheduler` from now on: a test waits for a step to be
    in the scheduler's queue on this, not on a sleep a loaded machine may outlast."""
    submitted = threading.Semaphore(0)
    run = scheduler.run

    def run_and_tell(item, owner):
        submitted.release()
        return run(item, owner)

    monkeypatch.setattr(scheduler, "run", run_and_tell)
    return submitted


def test_concurrent_sequences_share_steps_and_match_their_solo_runs_bit_for_bit():
    model, scheduler = _model()
    prompts = [list(range(1, 2 + 3 * i)) for i in range(8)]  # ragged: 1..22 tokens
    solo = [_greedy(model, p, 6) for p in prompts]  # one at a time: batches of one
    steps_alone = scheduler.stats.steps
    batched: list = [None] * 8

    def request(i: int):
        def run():
            batched[i] = _greedy(model, prompts[i], 6, StepOwner(tenant=f"t{i % 3}"))
        return run

    _in_threads(*(request(i) for i in range(8)))
    for i in range(8):
        assert all(np.array_equal(a, b) for a, b in zip(solo[i], batched[i], strict=True)), f"request {i}"
    assert scheduler.stats.max_batch > 1 and scheduler.stats.steps - steps_alone < steps_alone
    assert model.backend.kv_pool.stats().blocks_used == 0


def test_small_request_keeps_its_pace_while_another_tenant_floods():
    model, scheduler = _model()
    stop = threading.Event()
    flood_tokens = [0]
    flooding = threading.Barrier(7)  # the 6 flood threads, each with a prompt done, and this one

    def flood():
        first = True
        while not stop.is_set():  # long prompts, back to back: two 128-token chunks each
            seq = model.open_sequence(300)
            seq.step(list(range(1, 257)), StepOwner(tenant="flood"))
            flood_tokens[0] += 256
            seq.close()
            if first:
                first = False
                flooding.wait(60)

    floods = [threading.Thread(target=flood) for _ in range(6)]
    for t in floods:
        t.start()
    flooding.wait(60)  # every flood thread is under way, and queues its next prompt now
    before = scheduler.stats.steps
    _greedy(model, [1, 2, 3], 8, StepOwner(tenant="small"))  # 9 steps of its own
    during = scheduler.stats.steps - before
    stop.set()
    for t in floods:
        t.join(60)
    # FIFO would put each of its steps behind the flood's queued chunks (several steps each).
    assert during <= 2 * 9 + 4, f"the small request needed {during} scheduler steps for its 9"
    assert flood_tokens[0] >= 256


def test_step_waiting_for_kv_blocks_fails_at_its_deadline_naming_the_budget():
    model, _ = _model(kv_blocks=4)
    holder = model.open_sequence(128)
    holder.step(list(range(1, 3 * BLOCK_TOKENS)))  # 3 of 4 blocks
    waiter = model.open_sequence(128)
    started = time.monotonic()
    with pytest.raises(Overloaded, match=r"deadline waiting for KV memory: .*budget .*--kv-memory"):
        # 1.5 s: long enough that a loaded machine still reaches the KV wait before the deadline
        waiter.step(list(range(100, 100 + 2 * BLOCK_TOKENS)), StepOwner(deadline=time.monotonic() + 1.5))
    assert 1.4 < time.monotonic() - started < 30  # it waited for its deadline, then left
    assert waiter.kv_blocks == 0 and waiter.tokens == []
    assert holder.step([5]).shape == (model.config.n_vocab,)  # the holder was never disturbed


def test_waiting_step_runs_once_another_sequence_frees_blocks(monkeypatch):
    model, scheduler = _model(kv_blocks=4)
    holder = model.open_sequence(128)
    holder.step(list(range(1, 3 * BLOCK_TOKENS)))
    submitted = _steps_submitted(scheduler, monkeypatch)
    got: list = []

    def wait_for_blocks():
        prompt = list(range(100, 100 + 2 * BLOCK_TOKENS))
        got.append(_greedy(model, prompt, 0, StepOwner(deadline=time.monotonic() + 30)))

    waiter = threading.Thread(target=wait_for_blocks)
    waiter.start()
    assert submitted.acquire(timeout=60)
    time.sleep(0.3)  # time for a scheduler that evicted the holder to run it (a loaded machine only hides that)
    assert not got  # still waiting: nothing was evicted for it
    holder.close()
    waiter.join(30)
    assert len(got) == 1
    assert np.array_equal(got[0][0], _greedy(model, list(range(100, 100 + 2 * BLOCK_TOKENS)), 0)[0])


def test_cancelled_request_leaves_the_queue_and_its_blocks_come_back(monkeypatch):
    model, scheduler = _model(kv_blocks=4)
    holder = model.open_sequence(128)
    holder.step(list(range(1, 3 * BLOCK_TOKENS)))
    cancel = threading.Event()
    errors: list[BaseException] = []
    victim = model.open_sequence(128)
    victim.step([1, 2, 3])  # holds the 4th block

    def blocked_step():
        try:
            victim.step(list(range(100, 99 + 2 * BLOCK_TOKENS)), StepOwner(should_stop=cancel.is_set))
        except RequestCancelled as exc:
            errors.append(exc)

    submitted = _steps_submitted(scheduler, monkeypatch)
    thread = threading.Thread(target=blocked_step)
    thread.start()
    assert submitted.acquire(timeout=60)  # its step is with the scheduler, which has no blocks for it
    cancel.set()
    thread.join(10)
    assert len(errors) == 1 and "cancelled" in str(errors[0])
    assert victim.tokens == [1, 2, 3]  # what it had committed stays; the cancelled step left nothing
    victim.close()
    assert model.backend.kv_pool.stats().blocks_used == 3  # only the holder's


def test_a_sequence_that_stops_calling_never_holds_the_batch_back():
    model, _ = _model()
    spinning, release = threading.Event(), threading.Event()

    def spinner():
        seq = model.open_sequence(64)
        seq.step([1, 2, 3], StepOwner(tenant="spin"))
        spinning.set()
        release.wait(120)  # the guest is busy in its own code, not in a host call, until told otherwise
        seq.close()

    done = threading.Event()
    thread = threading.Thread(target=spinner)
    thread.start()
    spinning.wait(60)
    worker = threading.Thread(target=lambda: (_greedy(model, [4, 5], 10, StepOwner(tenant="busy")), done.set()))
    worker.start()
    worker.join(90)  # a scheduler that waited for the spinner would never finish these 11 steps
    finished = done.is_set()
    release.set()
    thread.join(10)
    assert finished


def test_a_guest_waiting_in_seq_finish_is_cancelled_by_the_sandboxs_cancel_event(monkeypatch):
    from realm.sandbox.intake import compile_guest, reference_guest_path
    from realm.sandbox.run import TenantSandbox

    model, scheduler = _model(kv_blocks=4)
    holder = model.open_sequence(128)
    holder.step(list(range(1, 4 * BLOCK_TOKENS)))  # the whole pool: the guest's prefill must wait
    submitted = _steps_submitted(scheduler, monkeypatch)
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def request():
        try:
            TenantSandbox(model).run(compile_guest(reference_guest_path().read_bytes()),
                                     {"prompt": "hello there", "max_tokens": 4}, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001  the test looks at what ended it
            outcome.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    assert submitted.acquire(timeout=60)  # its prefill is with the scheduler, which has no blocks for it
    assert not outcome  # waiting for blocks, within its (300 s) deadline
    cancel.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], RequestCancelled), outcome
    assert model.backend.kv_pool.stats().blocks_used == 4  # the holder's; the guest left nothing
