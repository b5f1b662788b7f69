"""Payloads by reference (issue 21): putting values over Settings.offload_bytes in a payload
store, and reading them back wherever a record holds a reference (_blobs.py).

The Redis chunk store keeps a value as one hash of 1 MiB chunks, `<prefix>:{<queue>}:blob:
<task id>:<name>`, in the task's slot. It is written before the script that stores the
reference, with a pending TTL (PENDING_SECONDS): a client that stops in between leaves a key
that expires by itself, so the bound on an orphan is that TTL. The script that stores the
reference adopts the key (lib/blobs.lua) and from then on the scripts give it the record's
lifetime. Every name is new (a ULID, or the run's lease generation), so a run that lost its
lease never overwrites the value another run stored.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
from ulid import ULID

from segue._blobs import CUSTOM, REDIS, REF_HEAD, PayloadStore, Ref, is_ref, make_ref, parse_ref
from segue._faults import faultpoint
from segue._keys import Keyspace, queue_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from segue._transport import Transport
    from segue._wire import EnqueueSpec

CHUNK = 1 << 20  # bytes per chunk: no single command carries more
PENDING_SECONDS = 600  # how long a value lives before a record adopts it
_PUTS_AT_ONCE = 8


class RedisChunkStore:
    """The default PayloadStore: chunk hashes in the task's slot of the App's server."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def _key(self, task_id: str) -> Keyspace:
        return self._t.keyspace(queue_of(task_id))

    async def put(self, task_id: str, name: str, data: bytes) -> None:
        key = self._key(task_id).blob(task_id, name)
        view = memoryview(data)
        async with self._t.errors(), self._t.client.pipeline(transaction=False) as pipe:
            pipe.delete(key)
            for i in range(max(1, -(-len(data) // CHUNK))):
                pipe.hset(key, str(i), bytes(view[i * CHUNK : (i + 1) * CHUNK]))
            pipe.pexpire(key, PENDING_SECONDS * 1000)
            await pipe.execute()

    async def get(self, task_id: str, name: str) -> bytes:
        key = self._key(task_id).blob(task_id, name)
        async with self._t.errors():
            n = await self._t.client.hlen(key)
            if not n:
                raise KeyError(f"{task_id} {name}")
            async with self._t.client.pipeline(transaction=False) as pipe:
                for i in range(n):
                    pipe.hget(key, str(i))
                parts = await pipe.execute()
        if any(p is None for p in parts):
            raise KeyError(f"{task_id} {name}")  # expired between the two reads
        return b"".join(parts)

    async def delete(self, task_id: str, name: str) -> None:
        async with self._t.errors():
            await self._t.client.delete(self._key(task_id).blob(task_id, name))


def store_of(transport: Transport, ref_store: str = "") -> tuple[str, PayloadStore]:
    """The store new values go to (or the one `ref_store` names), with its reference kind."""
    custom = transport.settings.payload_store
    if ref_store == REDIS or (not ref_store and custom is None):
        return REDIS, RedisChunkStore(transport)
    if custom is None:
        raise KeyError("an offloaded value in a custom store, and no Settings.payload_store")
    return CUSTOM, custom


def offloads(transport: Transport, size: int) -> bool:
    """Whether a value of `size` encoded bytes is stored by reference."""
    least = transport.settings.offload_bytes
    return least is not None and size > least


async def put(transport: Transport, task_id: str, name: str, data: bytes) -> bytes:
    """Store `data` and return the reference a record holds instead."""
    kind, store = store_of(transport)
    await store.put(task_id, name, data)
    faultpoint("after_offload_put")
    return make_ref(Ref(kind, task_id, name, len(data), max(1, -(-len(data) // CHUNK))))


async def fetch(transport: Transport, data: bytes | str) -> bytes:
    """The value a reference names (KeyError when it is gone: expired, or deleted)."""
    ref = parse_ref(data)
    _, store = store_of(transport, ref.store)
    return await store.get(ref.id, ref.name)


async def resolve(transport: Transport, data: bytes) -> bytes:
    """A stored value with its references replaced by what they name: the value itself, or a
    workflow step's list of results from the steps before it (spliced JSON)."""
    if is_ref(data):
        return await fetch(transport, data)
    if REF_HEAD not in data or not data.startswith(b"["):
        return data
    items = _raw_list.decode(data)
    values = await asyncio.gather(*(_resolved(transport, bytes(item)) for item in items))
    return b"[" + b",".join(values) + b"]"


async def _resolved(transport: Transport, item: bytes) -> bytes:
    return await fetch(transport, item) if is_ref(item) else item


_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


async def offload_specs(transport: Transport, specs: Iterable[EnqueueSpec]) -> None:
    """Put the arguments of the specs over offload_bytes in the store, each spec then
    carrying the reference (enqueue.lua and graph.lua adopt the blob with the record)."""
    big = [s for s in specs if offloads(transport, len(s.payload))]
    if not big:
        return

    # a few at once: each holds a connection of the pool while its chunks go
    room = asyncio.Semaphore(_PUTS_AT_ONCE)

    async def one(spec: EnqueueSpec) -> None:
        data = spec.payload.encode() if isinstance(spec.payload, str) else spec.payload
        async with room:
            spec.payload = await put(transport, spec.id, f"args.{ULID()}", data)

    await asyncio.gather(*(one(s) for s in big))


def sizes(rec: dict[bytes, bytes], fields: dict[str, bytes]) -> dict[str, int]:
    """What of a record is offloaded: {what: encoded size}, for `fields` {what: code}."""
    out: dict[str, int] = {}
    for what, code in fields.items():
        value = rec.get(code)
        if value is not None and is_ref(value):
            try:
                out[what] = parse_ref(value).size
            except ValueError:
                continue
    return out


async def forget(transport: Transport, values: Iterable[Any]) -> None:
    """Delete from a custom store the values these stored references name (a record being
    deleted); the Redis chunk store's go with the record, in its script."""
    for value in values:
        if value is None or not is_ref(value):
            continue
        try:
            ref = parse_ref(value)
        except ValueError:
            continue
        if ref.store == CUSTOM:
            _, store = store_of(transport, CUSTOM)
            await store.delete(ref.id, ref.name)
