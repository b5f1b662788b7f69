"""Workflows across real processes: a paused chain survives SIGKILLed workers and a server
restart (AOF), sub-tasks outlive the worker of their parent, a 1,000-step fan-out keeps to
the worker's concurrency, and a failure at the root of an `after=` tree reaches every level
without running any dependant.

Workers are `python -m segue worker tests.apps.workflows:app` subprocesses; every execution
is recorded in a ledger list (tests/apps/workflows.py), read here to count runs. The ledger,
the gates and the counters live on the session's server, which no test restarts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskCancelled, TaskFailed, TaskHandle, TaskStatus
from tests._support import (
    ACL_PASSWORD,
    ACL_USER,
    Engine,
    Server,
    add_acl_user,
    admin_client,
    keys_of,
)
from tests._workers import Fleet, Slot
from tests.apps import workflows
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow


def ledger_key(queue: str) -> str:
    return f"ledger:{{{queue}}}"  # the queue's hash tag: one slot on the cluster too


def gate_key(queue: str, name: str) -> str:
    return f"gate:{{{queue}}}:{name}"


def fleet(url: str, queue: str, ledger_url: str) -> Fleet:
    """`segue worker tests.apps.workflows:app` subprocesses recording to the queue's ledger."""
    env = {"LEDGER_URL": ledger_url, "LEDGER_KEY": ledger_key(queue)}
    return Fleet("tests.apps.workflows:app", url, queue, concurrency=4, lease=1.5, env=env)


@dataclass(frozen=True)
class Row:
    """One execution (or one point of it) of one task, as recorded by the task."""

    task: str
    worker: str
    tries: int
    label: str

    def by(self, slot: Slot) -> bool:
        return self.worker.startswith(slot.id_prefix)


class Ledger:
    """The ledger list of a queue, and its gates, through the admin connection."""

    def __init__(self, engine: Engine, queue: str) -> None:
        self.engine = engine
        self.queue = queue
        self.key = ledger_key(queue)

    async def rows(self, task_id: str | None = None) -> list[Row]:
        """Every row, or those of one task."""
        client = admin_client(self.engine)
        try:
            raw = await client.lrange(self.key, 0, -1)
        finally:
            await client.aclose()
        rows = [Row(t, w, int(n), s) for t, w, n, s in (r.decode().split() for r in raw)]
        return [r for r in rows if task_id is None or r.task == task_id]

    async def wait_for_label(self, task_id: str, label: str, timeout: float = 10.0) -> None:
        async def recorded() -> bool:
            return any(r.label == label for r in await self.rows(task_id))

        await eventually(recorded, timeout=timeout, interval=0.01)

    async def open_gate(self, name: str) -> None:
        client = admin_client(self.engine)
        try:
            await client.set(gate_key(self.queue, name), 1)
        finally:
            await client.aclose()

    async def get(self, key: str) -> bytes | None:
        client = admin_client(self.engine)
        try:
            value: bytes | None = await client.get(key)
        finally:
            await client.aclose()
        return value


def use(app: App, url: str, queue: str) -> App:
    # the test's own App knows the tasks of the worker module (same names and types)
    app.settings = app.settings.replace(redis_url=url, queue=queue, poll_seconds=0.2)
    return app


@pytest.fixture
def workers(segue_valkey: Engine, queue_name: str) -> Iterator[Fleet]:
    with fleet(segue_valkey.url, queue_name, segue_valkey.admin_url) as f:
        yield f


@pytest.fixture
def client_app(segue_valkey: Engine, queue_name: str) -> App:
    return use(workflows.app, segue_valkey.url, queue_name)


@pytest.fixture
def ledger(segue_valkey: Engine, queue_name: str) -> Ledger:
    return Ledger(segue_valkey, queue_name)


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    add_acl_user(s.port)  # ACL users are not in the AOF: added again after each start
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


async def statuses(handles: Sequence[TaskHandle[Any]]) -> list[TaskStatus]:
    return [await h.status() for h in handles]


# --- 1. a paused chain across SIGKILLed workers and a server restart ----------------------


async def test_a_paused_chain_resumes_after_its_workers_and_the_server_were_killed(
    aof_server: Server, segue_valkey: Engine, ledger: Ledger, queue_name: str
) -> None:
    assert aof_server.proc is not None
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0"
    app = use(workflows.app, url, queue_name)
    workers = fleet(url, queue_name, segue_valkey.admin_url)
    step = workflows.step
    try:
        first = [workers.start(), workers.start()]
        async with app:
            # 10 steps, 0 -> 1 -> ... -> 10; step 3 waits for the test's gate
            chain = step.call(0) | step | step.call(gate=gate_key(queue_name, "step3"))
            for _ in range(7):
                chain = chain | step
            h = await chain.enqueue()
            ids = [s.id for s in await h.steps()]
            assert ids == [f"{h.id}.{n}" for n in range(1, 11)]
            await ledger.wait_for_label(ids[2], "step3")
            # paused while step 3 runs: it finishes, and step 4 is held instead of queued
            assert await h.pause(reason="ops: maintenance") is TaskStatus.PAUSED
            await ledger.open_gate("step3")

            async def step4_held() -> bool:
                return (await h.steps())[3].status is TaskStatus.PAUSED

            await eventually(step4_held, timeout=10)
            before = await h.steps()
        held = [TaskStatus.SUCCEEDED] * 3 + [TaskStatus.PAUSED] + [TaskStatus.WAITING] * 6
        assert [s.status for s in before] == held
        assert [s.result for s in before[:3]] == [1, 2, 3]

        workers.kill_all()  # SIGKILL: no worker says goodbye
        rows_before = await ledger.rows()
        aof_server.kill()
        aof_server.start()
        add_acl_user(aof_server.port)
        second = workers.start()

        async with app:
            again = await app.workflow_handle(h.id)  # a handle from the id alone
            assert await again.status() is TaskStatus.PAUSED
            after_restart = await again.steps()
            assert [(s.id, s.status, s.result) for s in after_restart] == [
                (s.id, s.status, s.result) for s in before
            ]
            # the new worker serves the queue, and still runs none of the held steps
            probe = await workflows.work.enqueue("probe")
            assert await probe.result(timeout=15) == "probe"
            assert await ledger.rows() == [*rows_before, *await ledger.rows(probe.id)]
            assert await again.status() is TaskStatus.PAUSED

            assert await again.resume(reason="ops: done") is TaskStatus.RUNNING
            assert await again.result(timeout=15) == 10
            assert await again.status() is TaskStatus.SUCCEEDED
            done = await again.steps()
        assert [s.status for s in done] == [TaskStatus.SUCCEEDED] * 10
        assert [s.result for s in done] == list(range(1, 11))
    finally:
        workers.stop_all()

    rows = [r for r in await ledger.rows() if r.task in ids]
    assert Counter(r.task for r in rows) == Counter(ids)  # each step ran exactly once
    assert [r.label for r in rows] == [f"step{n}" for n in range(1, 11)]  # in chain order
    assert all(any(r.by(p) for p in first) for r in rows[:3])
    assert all(r.by(second) for r in rows[3:])
    assert {r.tries for r in rows} == {1}
    step4 = done[3]
    assert [t.status for t in step4.history] == [
        TaskStatus.WAITING,
        TaskStatus.PAUSED,
        TaskStatus.QUEUED,
        TaskStatus.RUNNING,
        TaskStatus.SUCCEEDED,
    ]
    assert step4.history[1].reason == "workflow paused"
    assert step4.history[2].reason == "ops: done"


# --- 2. sub-tasks outlive the worker of their parent ----------------------------------------


async def test_sub_tasks_and_their_parent_finish_after_the_parents_worker_died_while_it_waited(
    workers: Fleet, client_app: App, ledger: Ledger, segue_valkey: Engine
) -> None:
    first = workers.start(concurrency=2)
    async with client_app:
        h = await workflows.parent.enqueue(4, gate_key(client_app.settings.queue, "children"))
        kids = [f"{h.id}.{n}" for n in range(1, 5)]
        handles = [await client_app.task_handle(k) for k in kids]
        # the parent waits without a slot, so both slots of the first worker take children,
        # which stay running (at their gate) until the test opens it
        assert await h.wait_for(TaskStatus.WAITING, timeout=10) is TaskStatus.WAITING

        async def two_children_started() -> bool:
            return sum(1 for r in await ledger.rows() if r.task in kids) == 2

        await eventually(two_children_started, timeout=10)
        assert await h.status() is TaskStatus.WAITING
        in_flight = {r.task for r in await ledger.rows() if r.task in kids}
        workers.kill(first)

        second = workers.start(concurrency=4)

        async def all_children_on_second() -> bool:
            infos = [await c.info() for c in handles]
            return all(
                i.status is TaskStatus.RUNNING
                and i.worker_id is not None
                and i.worker_id.startswith(second.id_prefix)
                for i in infos
            )

        # the queued children at once, the two the dead worker held when their leases expire
        await eventually(all_children_on_second, timeout=15)
        assert await h.status() is TaskStatus.WAITING
        await ledger.open_gate("children")
        assert await h.result(timeout=15) == 10 * (0 + 1 + 2 + 3)
        info = await h.info()
        child_infos = [await c.info() for c in handles]

    assert await keys_of(segue_valkey, f"*task:{h.id}.*") == sorted(
        f"segue:{{{client_app.settings.queue}}}:task:{k}" for k in kids
    )
    rows = await ledger.rows()
    child_rows = [r for r in rows if r.task in kids or r.task.startswith(f"{h.id}.")]
    assert {r.task for r in child_rows} == set(kids)  # ids <parent>.<n>, no others
    ends = [r for r in child_rows if r.label == "end"]
    assert Counter(r.task for r in ends) == Counter(kids)  # each child's work done once
    assert all(r.by(second) for r in ends)
    for k in kids:
        starts = [(r.by(first), r.tries) for r in child_rows if r.task == k and r.label == "start"]
        # a child the dead worker held started again, as its second try; the others once
        assert starts == ([(True, 1), (False, 2)] if k in in_flight else [(False, 1)])
    assert [c.result for c in child_infos] == [0, 10, 20, 30]
    assert all(c.status is TaskStatus.SUCCEEDED for c in child_infos)

    parent_rows = [r for r in rows if r.task == h.id]
    assert [(r.label, r.by(first)) for r in parent_rows] == [
        ("start", True),
        ("enqueued", True),
        ("start", False),  # re-run by the last child's end, on the new worker
        ("enqueued", False),  # the same children handed back: none enqueued twice
        ("done", False),
    ]
    assert all(r.by(second) for r in parent_rows[2:])
    assert {r.tries for r in parent_rows} == {1} and info.tries == 1  # waiting spent no try
    assert [t.status for t in info.history].count(TaskStatus.WAITING) == 1


async def test_a_parent_killed_between_its_enqueue_and_its_wait_finds_the_same_children(
    workers: Fleet, client_app: App, ledger: Ledger, segue_valkey: Engine
) -> None:
    first = workers.start(concurrency=1)
    async with client_app:
        h = await workflows.parent.enqueue(3, "", gate_key(client_app.settings.queue, "parent"))
        kids = [f"{h.id}.{n}" for n in range(1, 4)]
        handles = [await client_app.task_handle(k) for k in kids]
        # held at its gate after ctx.enqueue, before ctx.wait_for, in the only slot
        await ledger.wait_for_label(h.id, "enqueued")
        assert await statuses(handles) == [TaskStatus.QUEUED] * 3
        workers.kill(first)
        # the re-run after the lease expiry goes through the gate: its ctx.enqueue was
        # journaled, so the lost run made progress and spent no try (ctx.tries stays 1)
        await ledger.open_gate("parent")

        second = workers.start(concurrency=4)
        assert await h.result(timeout=15) == 10 * (0 + 1 + 2)
        info = await h.info()

    assert await keys_of(segue_valkey, f"*task:{h.id}.*") == sorted(
        f"segue:{{{client_app.settings.queue}}}:task:{k}" for k in kids
    )
    rows = await ledger.rows()
    child_rows = [r for r in rows if r.task.startswith(f"{h.id}.")]
    # each child recorded once (enqueued once, ran once), on the new worker
    assert Counter((r.task, r.label) for r in child_rows) == Counter(
        (k, label) for k in kids for label in ("start", "end")
    )
    assert all(r.by(second) and r.tries == 1 for r in child_rows)
    parent_rows = [r for r in rows if r.task == h.id]
    assert [(r.label, r.tries) for r in parent_rows[:2]] == [("start", 1), ("enqueued", 1)]
    assert all(r.by(first) for r in parent_rows[:2])
    # the second try runs on the new worker: it finds the children ended (or, if it ran
    # before them, waits once and runs again), and every run hands back the same three
    later = [r.label for r in parent_rows[2:]]
    assert later in (["start", "enqueued", "done"], ["start", "enqueued"] * 2 + ["done"])
    assert all(r.by(second) and r.tries == 1 for r in parent_rows[2:])
    assert info.tries == 1  # the killed run had journaled its enqueue: no try spent


# --- 3. a 1,000-step fan-out keeps to the worker's concurrency ------------------------------


async def test_a_thousand_step_fan_out_and_merge_on_a_worker_with_concurrency_8(
    workers: Fleet, client_app: App, ledger: Ledger
) -> None:
    queue = client_app.settings.queue
    counter = f"running:{{{queue}}}"
    workers.start(concurrency=8)
    async with client_app:
        group = client_app.group(workflows.unit.call(i, counter) for i in range(1000))
        h = await (group | workflows.merge).enqueue()
        assert await h.result(timeout=30) == [i * i for i in range(1000)]
        steps = await h.steps()
    assert len(steps) == 1001
    assert all(s.status is TaskStatus.SUCCEEDED for s in steps)
    peak = await ledger.get(f"{counter}:max")
    # never more than 8 at once, and the 8 slots were used
    assert peak is not None and int(peak) == 8
    assert await ledger.get(counter) == b"0"
    rows = await ledger.rows()
    units = [r for r in rows if r.label == "unit"]
    assert Counter(r.task for r in units) == Counter(s.id for s in steps[:1000])
    merges = [(r.task, r.tries, r.label) for r in rows if r.label.startswith("merge")]
    assert merges == [(steps[1000].id, 1, "merge1000")]  # once, with the 1,000 results


# --- 4. a failure at the root of an after= tree (every engine) -------------------------------


async def test_a_failed_root_fails_or_cancels_three_levels_of_dependants_none_of_which_runs(
    segue_engine: Engine, queue_name: str
) -> None:
    app = use(workflows.app, segue_engine.url, queue_name)
    ledger = Ledger(segue_engine, queue_name)
    workers = fleet(segue_engine.url, queue_name, segue_engine.admin_url)
    work = workflows.work
    try:
        async with app:
            # the whole tree is in place before any worker runs: the failure reaches tasks
            # that are WAITING
            boom = await work.enqueue("boom")
            ok = await work.enqueue("ok")
            l1_fail = await work.options(after=[boom]).enqueue("l1_fail")
            l1_cancel = await work.options(after=[boom], on_failure="cancel").enqueue("l1_cancel")
            l1_both = await work.options(after=[ok, boom]).enqueue("l1_both")
            l2_cancel = await work.options(after=[l1_fail], on_failure="cancel").enqueue("l2_c")
            l2_fail = await work.options(after=[l1_cancel]).enqueue("l2_fail")
            l3_fail = await work.options(after=[l2_cancel]).enqueue("l3_fail")
            l3_cancel = await work.options(after=[l2_fail, ok], on_failure="cancel").enqueue(
                "l3_cancel"
            )
            ok2 = await work.options(after=[ok]).enqueue("ok2")  # the healthy branch runs
            dependants = [l1_fail, l1_cancel, l1_both, l2_cancel, l2_fail, l3_fail, l3_cancel]
            assert await statuses([*dependants, ok2]) == [TaskStatus.WAITING] * 8

            workers.start()
            assert await ok2.result(timeout=15) == "ok2"
            with pytest.raises(TaskFailed, match="the root of the tree failed"):
                await boom.result(timeout=15)
            # a dependant that arrives after the root failed fails at once
            late = await work.options(after=[boom]).enqueue("late")
            assert await statuses([*dependants, late]) == [
                TaskStatus.FAILED,
                TaskStatus.CANCELLED,
                TaskStatus.FAILED,
                TaskStatus.CANCELLED,
                TaskStatus.FAILED,
                TaskStatus.FAILED,
                TaskStatus.CANCELLED,
                TaskStatus.FAILED,
            ]
            infos = {h: await h.info() for h in [*dependants, late]}
            for h in (l1_fail, l1_both, l2_fail, l3_fail, late):
                with pytest.raises(TaskFailed, match="dependency"):
                    await h.result(timeout=1)
            for h in (l1_cancel, l2_cancel, l3_cancel):
                with pytest.raises(TaskCancelled):
                    await h.result(timeout=1)
    finally:
        workers.stop_all()

    rows = await ledger.rows()
    # only the roots and the healthy branch ran, each once; no dependant of the failure ran
    assert Counter(r.label for r in rows) == Counter(["boom", "ok", "ok2"])
    for h, info in infos.items():
        assert info.tries == 0 and info.worker_id is None, h
        assert TaskStatus.RUNNING not in [t.status for t in info.history], h
    reasons = {h: (i.error.type, i.error.reason) for h, i in infos.items() if i.error}
    assert reasons == {
        l1_fail: ("DependencyFailed", "dependency_failed"),
        l1_cancel: ("Cancelled", "dependency_failed"),
        l1_both: ("DependencyFailed", "dependency_failed"),
        l2_cancel: ("Cancelled", "dependency_failed"),
        l2_fail: ("DependencyFailed", "dependency_cancelled"),
        l3_fail: ("DependencyFailed", "dependency_cancelled"),
        l3_cancel: ("Cancelled", "dependency_failed"),
        late: ("DependencyFailed", "dependency_failed"),
    }
    # every level names the root the failure came from
    for h in dependants:
        error = infos[h].error
        assert error is not None and f"wf.work ({boom.id}) ended failed" in error.message, h
