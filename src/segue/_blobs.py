"""Payloads by reference: the store protocol and the reference a record holds instead.

With Settings.offload_bytes set, an encoded value over it (a task's arguments, its result, a
ctx.state value) is put in a payload store, and the record keeps a small JSON reference
in its place. The reference is JSON (so a workflow step's input that splices results into a
list stays JSON), and its first key is one no JSON a user writes starts with in practice:
`{"\\u0000ref": {...}}`. The scripts recognise it by that head (lib/blobs.lua).
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

import msgspec


@runtime_checkable
class PayloadStore(Protocol):
    """Where offloaded values live: bytes put, got and deleted by task id and name.

    segue ships the Redis chunk store (the default: chunk keys in the task's slot, with the
    record's lifetime); pass another with `Settings(payload_store=...)`, e.g. object storage
    (docs/payloads.md). An external store keeps values until `delete` is called, which
    segue does when the task's record is deleted; expiry of what a record's ttl ended is the
    store's own job (a lifecycle rule)."""

    async def put(self, task_id: str, name: str, data: bytes) -> None:
        """Store `data` under (task_id, name), replacing what was there."""
        ...

    async def get(self, task_id: str, name: str) -> bytes:
        """The bytes stored under (task_id, name); raise KeyError when there are none."""
        ...

    async def delete(self, task_id: str, name: str) -> None:
        """Remove what is stored under (task_id, name); nothing there is not an error."""
        ...


REDIS: Final = "redis"  # the Redis chunk store: the scripts manage its keys' lifetimes
CUSTOM: Final = "custom"  # Settings.payload_store: its lifetime is its own
REF_HEAD: Final = b'{"\\u0000ref":'


class Ref(msgspec.Struct, frozen=True, gc=False):
    """What a record holds for an offloaded value. The field order is read by the scripts
    (lib/blobs.lua: store, id, name first): change it there too."""

    store: str
    id: str  # the task whose blob it is (a workflow step's input names the step before)
    name: str  # args.<ulid>, result.<generation>, state.<generation>.<ulid>
    size: int  # bytes of the encoded value
    chunks: int = 1


_KEY: Final = "\x00ref"
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(dict[str, Ref])


def is_ref(data: bytes | str | None) -> bool:
    """Whether a stored value is a reference (cheap: its first bytes)."""
    if data is None:
        return False
    if isinstance(data, str):
        return data.startswith(REF_HEAD.decode())
    return data[: len(REF_HEAD)] == REF_HEAD


def make_ref(ref: Ref) -> bytes:
    return _enc.encode({_KEY: ref})


def parse_ref(data: bytes | str) -> Ref:
    """The reference in a stored value (ValueError when it is not one)."""
    try:
        return _dec.decode(data)[_KEY]
    except (msgspec.DecodeError, KeyError) as exc:
        raise ValueError(f"not an offloaded value's reference: {exc}") from None


def human_size(size: int) -> str:
    """A byte count as a person reads it: 512 B, 1.5 KiB, 5.0 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached
