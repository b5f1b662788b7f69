"""Task versions: what a worker does with a task whose record is of another version of it.

`@app.task(version=N, migrate={old: upgrade})`: the record carries the version of the code
that enqueued it (TaskField.VERSION). A worker whose code is older releases the task
(`NewerVersion`: no try spent, never counted as an unknown-task release). A worker whose
code is newer upgrades the task's ctx.state through the chain of `migrate` functions and
writes it with the new version in one fenced step (migrate.lua) before the task's code
runs: that is the run's first write, so a worker of the old version never reads upgraded
state. A missing link of the chain ends the task FAILED `version_unsupported`.
State values stored by reference (Settings.offload_bytes) are read through it, and upgraded
values over offload_bytes are stored by reference again (migrate.lua adopts them).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from ulid import ULID

from segue._blobs import is_ref
from segue._codec import decode_plain, encode
from segue._errors import LeaseLost
from segue._faults import faultpoint
from segue._journal import FIELD
from segue._offload import fetch, offloads, put

if TYPE_CHECKING:
    from segue._options import TaskOptions
    from segue._run_control import RunControl

log = logging.getLogger("segue.worker")


class VersionUnsupported(Exception):
    """The task's version has no chain of migrations up to this worker's code of it."""


class MigrationFailed(Exception):
    """A `migrate` function raised, or returned something other than a dict of JSON."""


def check_chain(task_id: str, opts: TaskOptions, version: int) -> None:
    """Raise VersionUnsupported when `opts.migrate` cannot take `version` up to
    `opts.version`."""
    if opts.migrations(version) is not None:
        return
    have = opts.migrate or {}
    missing = [v for v in range(version, opts.version) if v not in have]
    links = ", ".join(f"{v}->{v + 1}" for v in missing)
    raise VersionUnsupported(
        f"task {task_id} ({opts.name}) is of version {version}, and this worker's code of it "
        f"is version {opts.version} with no migration {links} (migrate={{{missing[0]}: ...}})"
    )


async def upgrade(
    task_id: str, opts: TaskOptions, version: int, run: RunControl, limit: int
) -> None:
    """Upgrade the state of a task of `version` to `opts.version` and move the record's
    version with it (migrate.lua), fenced to the run. Raises VersionUnsupported,
    MigrationFailed, or LeaseLost when the run no longer holds the task."""
    check_chain(task_id, opts, version)
    steps = opts.migrations(version) or []
    what = f"task {task_id}: migrating its state from version {version} to {opts.version}"
    raw = await run.call(what, lambda: run.broker.reads.read_state(run.ks, task_id))
    journal = FIELD.encode()  # the step journal shares the hash: not state values
    old = {k.decode(): v for k, v in raw.items() if not k.startswith(journal)}
    # a migration sees the values themselves, not references to them
    try:
        plain = {
            k: await run.call(what, functools.partial(fetch, run.broker, v)) if is_ref(v) else v
            for k, v in old.items()
        }
    except KeyError as exc:
        # a failed try, as a migration that raises: not a worker's internal error, which
        # would put the task back to fail the same way for ever
        raise MigrationFailed(f"{what}: a state value is gone from the payload store") from exc
    state: Any = {k: decode_plain(v) for k, v in plain.items()}
    at = version
    try:
        for fn in steps:
            state = fn(dict(state))
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise TypeError(f"it returned {type(state).__name__}, not a dict of str keys")
            at += 1
        values = {k: encode(v, what=f"state value {k!r}", limit=limit) for k, v in state.items()}
    except Exception as exc:
        raise MigrationFailed(f"{what}: migrate[{at}] failed: {exc!r}") from exc
    if any(k.startswith(FIELD) for k in values):
        raise MigrationFailed(f"{what}: state keys starting {FIELD!r} are reserved")
    deletes = [k for k in old if k not in values]
    for k, data in values.items():
        if offloads(run.broker, len(data)):
            # a new name, as ctx.state.set gives: migrate.lua adopts it, fenced to this run
            name = f"state.{run.gen}.{ULID()}"
            values[k] = await run.call(
                what, functools.partial(put, run.broker, task_id, name, data)
            )
    versions = (version, opts.version)
    faultpoint("before_migrate")
    written = await run.call(
        what,
        lambda: run.broker.migrate_state(run.ks, task_id, run.gen, versions, values, deletes),
    )
    if not written:
        raise LeaseLost(f"{what}: this run no longer holds the task")
    faultpoint("after_migrate")
    log.info("task %s migrated from version %d to %d", task_id, version, opts.version)
