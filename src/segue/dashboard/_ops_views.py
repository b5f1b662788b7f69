"""The dashboard's pages and actions for the operator's day: the workflows list, the
schedules page, and bulk actions on dead letters. They reuse the rendering and redirects
of `_views.Views`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, quote

from starlette.exceptions import HTTPException

from segue import _ops_actions, _ops_reads
from segue._errors import InvalidTransition, SegueError, TaskNotFound
from segue.dashboard import _ops_lists

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response

    from segue._app import App
    from segue._client import Client
    from segue._handle import TaskHandle
    from segue._keys import Keyspace
    from segue._queries import Queries

    class Views(Protocol):
        """What these pages use of `_views.Views` (which imports this module)."""

        app: App
        client: Client
        page_size: int

        def page(
            self, request: Request, template: str, status_code: int = 200, **context: Any
        ) -> HTMLResponse: ...
        def back(self, request: Request, to: str | None, kind: str, text: str) -> Response: ...
        def _int(self, request: Request, name: str, default: int, high: int) -> int: ...
        def _queue(self, request: Request) -> str: ...


# a status filter on the workflows page looks at this many of the newest workflows
WORKFLOW_SCAN = 500
WORKFLOW_STATUSES = ("running", "paused", "compensating", "succeeded", "failed", "cancelled")
# a form of a dead-letter page carries at most a page of ids
MAX_FORM_FIELDS = 260


class OpsViews:
    def __init__(self, views: Views) -> None:
        self.v = views
        self.app = views.app

    # --- workflows --------------------------------------------------------------------

    async def workflows(self, request: Request) -> Response:
        v = self.v
        queue = v._queue(request)
        wanted = request.query_params.get("status") or ""
        if wanted and wanted not in WORKFLOW_STATUSES:
            raise HTTPException(400, f"unknown workflow status {wanted!r}")
        search = (request.query_params.get("q") or "").strip()[:200]
        offset = v._int(request, "offset", 0, 1_000_000)
        broker = await self.v.client.broker()
        reads = broker.reads
        spaces = [reads.keyspace(s) for s in (await broker.shards.read(queue)).serving(queue)]
        total = sum([await _ops_reads.workflow_total(reads, ks) for ks in spaces])
        filtered = bool(wanted or search)
        if not filtered:
            ids = await _workflow_ids(reads, spaces, offset, v.page_size + 1)
            rows = await _ops_lists.workflow_rows(self.app, queue, ids)
            shown, has_next, matched = rows[: v.page_size], len(ids) > v.page_size, None
        else:
            ids = await _workflow_ids(reads, spaces, 0, WORKFLOW_SCAN)
            if search:
                ids = [i for i in ids if search.casefold() in i.casefold()]
            rows = await _ops_lists.workflow_rows(self.app, queue, ids)
            if wanted:
                rows = [r for r in rows if r.status.value == wanted]
            matched = len(rows)
            shown = rows[offset : offset + v.page_size]
            has_next = offset + v.page_size < matched
        return v.page(
            request,
            "workflows.html",
            title=f"{queue}: workflows",
            queue=queue,
            queues=await self.app.queues(),
            rows=shown,
            total=total,
            matched=matched,
            scanned=min(total, WORKFLOW_SCAN),
            wanted=wanted,
            statuses=WORKFLOW_STATUSES,
            search=search,
            offset=offset,
            limit=v.page_size,
            has_next=has_next,
        )

    # --- schedules --------------------------------------------------------------------

    async def schedules(self, request: Request) -> Response:
        rows = await _ops_lists.schedule_rows(self.app)
        return self.v.page(
            request,
            "schedules.html",
            title="Schedules",
            rows=rows,
            paused=sum(1 for r in rows if r.info.paused),
        )

    async def schedule_action(self, request: Request) -> Response:
        form = _fields(await request.body())
        action, sid = _one(form, "action"), _one(form, "id")
        if action not in ("pause", "resume"):
            raise HTTPException(400, f"unknown schedule action {action!r}")
        handle = self.app.schedule(sid)
        try:
            await (handle.pause() if action == "pause" else handle.resume())
        except TaskNotFound as exc:
            return self.v.back(request, _one(form, "next"), "error", str(exc))
        done = "paused: its ticks are skipped until resumed" if action == "pause" else "resumed"
        return self.v.back(request, _one(form, "next"), "ok", f"schedule {sid} {done}")

    # --- dead letters in bulk -----------------------------------------------------------

    async def dead_action(self, request: Request) -> Response:
        form = _fields(await request.body())
        action, name = _one(form, "action"), _one(form, "queue")
        to = _one(form, "next") or f"/dead?queue={quote(name)}"
        if action not in ("retry_all", "delete_all", "retry_selected", "delete_selected"):
            raise HTTPException(400, f"unknown dead-letter action {action!r}")
        try:
            queue = self.app.queue(name)
        except Exception as exc:
            raise HTTPException(400, str(exc)) from None
        selected = action.endswith("_selected")
        ids: list[str] | None = None
        if selected:
            ids = [i for i in form.get("ids", []) if _in_queue(i, queue.name)]
            if not ids:
                return self.v.back(request, to, "error", "no dead letter was selected")
        broker = await self.v.client.broker()
        ks = broker.keyspace(queue.name)
        if action.startswith("retry"):
            queued, refused = await _ops_actions.retry_dead(
                broker, ks, ids, "retried from the dashboard"
            )
            text = f"{queued} dead letter(s) of {queue.name} queued again"
            if refused:
                text += f"; {len(refused)} refused: {refused[0]}"
            return self.v.back(request, to, "error" if refused else "ok", text)
        deleted = await _ops_actions.delete_dead(broker, ks, ids)
        return self.v.back(request, to, "ok", f"{deleted} dead letter(s) of {queue.name} deleted")


async def delete(
    views: Views, request: Request, handle: TaskHandle[Any], to: str | None
) -> Response:
    """The Delete button of an ended task (its row, or its page)."""
    try:
        deleted = await handle.delete()
    except InvalidTransition as exc:
        return views.back(request, to, "error", str(exc))
    text = f"task {handle.id} deleted" if deleted else f"task {handle.id} had no record"
    # its own page is gone: go back to the list it was in
    if to is None or to.startswith("/tasks/"):
        to = f"/tasks?queue={quote(handle.queue)}"
    return views.back(request, to, "ok", text)


async def signal(
    views: Views, request: Request, handle: TaskHandle[Any], form: dict[str, str]
) -> Response:
    """The signal form of a task's page: a name and JSON data, sent under the form's id."""
    to, name = form.get("next"), form.get("name", "").strip()
    try:
        data = json.loads(form.get("data") or "null")
    except ValueError as exc:
        return views.back(request, to, "error", f"the signal's data is not JSON: {exc}")
    try:
        status = await handle.signal(name, data, id=form.get("signal_id") or None)
    except (SegueError, ValueError) as exc:
        return views.back(request, to, "error", str(exc))
    return views.back(request, to, "ok", f"signal {name} sent: task {handle.id} is {status}")


def _fields(body: bytes) -> dict[str, list[str]]:
    try:
        return parse_qs(body.decode(), max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise HTTPException(400, f"a form has at most {MAX_FORM_FIELDS} fields") from None


def _one(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0]


def _in_queue(task_id: str, queue: str) -> bool:
    return task_id.partition(":")[0] == queue


async def _workflow_ids(
    reads: Queries, spaces: list[Keyspace], offset: int, limit: int
) -> list[str]:
    """A page of a queue's workflow ids, newest first; a sharded queue's merged from its
    shards (an id ends with a ULID, so newer sorts later)."""
    if len(spaces) == 1:
        return await _ops_reads.workflow_ids(reads, spaces[0], offset, limit)
    ids = [i for ks in spaces for i in await _ops_reads.workflow_ids(reads, ks, 0, offset + limit)]
    ids.sort(key=lambda i: i.rpartition(":wf-")[2], reverse=True)
    return ids[offset : offset + limit]
