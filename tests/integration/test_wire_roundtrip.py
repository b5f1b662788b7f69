"""Every enqueue field lands in its record field, and comes back in the claim's reply, on a
real server: a spec, a script and a record that disagree on an order fail here."""

from __future__ import annotations

import msgspec

from segue import App
from segue._calls import parse_claim, parse_created
from segue._wire import EnqueueSpec, GraphStep
from segue._wire import TaskField as F
from tests._support import Engine


async def test_every_enqueue_field_round_trips_through_record_and_claim(
    segue_valkey: Engine, queue_name: str
) -> None:
    app = App("wire", redis_url=segue_valkey.url, queue=queue_name)
    spec = EnqueueSpec(
        id=f"{queue_name}:1",
        name="shop.charge",
        payload=b'[[1,"a"],{}]',
        priority="low",
        delay_ms=0,
        at_ms=0,
        max_tries=7,
        timeout_ms=8_000,
        ttl_ms=90_000,
        unique="shop.charge:1",
        expire_ms=3_600_000,
        headers='{"trace":"t-1"}',
    )
    later = msgspec.structs.replace(spec, id=f"{queue_name}:2", unique="", delay_ms=60_000)
    fixed = msgspec.structs.replace(spec, id=f"{queue_name}:3", unique="", at_ms=4_102_444_800_000)
    async with app:
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        reply = await broker.run_calls([broker.enqueue_call(ks, [spec, later, fixed])])
        assert parse_created(reply[0]) == [1, 1, 1]
        rec = await broker.reads.task_record(ks, spec.id)
        assert rec[F.NAME.b] == b"shop.charge"
        assert rec[F.PAYLOAD.b] == spec.payload
        assert rec[F.PRIORITY.b] == b"low"
        assert rec[F.MAX_TRIES.b] == b"7"
        assert rec[F.TIMEOUT_MS.b] == b"8000"
        assert rec[F.TTL_MS.b] == b"90000"
        assert rec[F.UNIQUE_KEY.b] == b"shop.charge:1"
        assert rec[F.HEADERS.b] == b'{"trace":"t-1"}'
        assert rec[F.STATUS.b] == b"queued" and F.DUE_AT.b not in rec
        created = int(rec[F.ENQUEUED_AT.b])
        assert int(rec[F.EXPIRES_AT.b]) == created + 3_600_000
        delayed = await broker.reads.task_record(ks, later.id)
        assert delayed[F.STATUS.b] == b"scheduled"
        assert int(delayed[F.DUE_AT.b]) == int(delayed[F.ENQUEUED_AT.b]) + 60_000
        at = await broker.reads.task_record(ks, fixed.id)
        assert int(at[F.DUE_AT.b]) == 4_102_444_800_000
        # a second task under the same unique key names the holder
        dup = msgspec.structs.replace(spec, id=f"{queue_name}:4")
        again = await broker.run_calls([broker.enqueue_call(ks, [spec, dup])])
        assert parse_created(again[0]) == [0, spec.id]

        claimed = parse_claim((await broker.run_calls([broker.claim_call(ks, "w1", 5)]))[0])
        assert claimed.backlog == 1  # the one claimed runs; the two scheduled wait
        [run] = claimed.runs
        assert (run.id, run.name, run.payload) == (spec.id, spec.name, spec.payload)
        assert (run.tries, run.gen, run.lost) == (1, "1", 0)
        assert (run.timeout_ms, run.max_tries) == (8_000, 7)
        assert (run.input, run.headers) == (None, b'{"trace":"t-1"}')
        assert claimed.next_due_ms == int(delayed[F.DUE_AT.b])
        running = await broker.reads.task_record(ks, spec.id)
        assert running[F.WORKER.b] == b"w1" and int(running[F.STARTED_AT.b]) >= created


async def test_every_graph_field_round_trips_through_the_record(
    segue_valkey: Engine, queue_name: str
) -> None:
    app = App("wire", redis_url=segue_valkey.url, queue=queue_name)
    base = EnqueueSpec(f"{queue_name}:a", "a", b"[[],{}]", "normal", 0, 0, 1, 0, -1, "", 0, "")
    first = GraphStep(base, "", "", "fail", "0", "", "")
    second = GraphStep(
        msgspec.structs.replace(base, id=f"{queue_name}:b", name="b"),
        deps=f"{queue_name}:a|0",
        input_mode="l",
        on_failure="cancel",
        optional="1",
        xdeps="other:x|1",
        xdependants="other:y|0|-",
    )
    async with app:
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        reply = await broker.run_calls([broker.graph_call(ks, None, [first, second])])
        assert parse_created(reply[0]) == [1, 1]
        rec = await broker.reads.task_record(ks, second.spec.id)
        assert rec[F.STATUS.b] == b"waiting"
        assert rec[F.NAME.b] == b"b"
        assert rec[F.INPUT_MODE.b] == b"l" and rec[F.INPUT_COUNT.b] == b"2"
        assert rec[F.ON_FAILURE.b] == b"cancel" and rec[F.OPTIONAL.b] == b"1"
        assert rec[F.CROSS_PREFIX.b + b"other:x"] == b"0"
        assert rec[F.CROSS_DEPENDANTS.b] == b"other:y|0|-"
        assert rec[F.WAITING_FOR.b] == b"2"
        assert (await broker.reads.task_record(ks, first.spec.id))[F.OPTIONAL.b] == b"0"
