"""The dashboard's pages and actions: thin handlers over the public client API.

Every list is read one page at a time (`offset`, `limit`, capped), so a page costs the
same with ten tasks or ten million. Actions are POSTed forms (the gate checks their CSRF
token) that redirect back with a one-shot message, so the pages work without JavaScript;
the script only refreshes the parts marked `data-live`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote

from markupsafe import Markup
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from segue import _ops_reads
from segue._errors import (
    BrokerError,
    ConfigurationError,
    InvalidTransition,
    SegueError,
    TaskNotFound,
)
from segue._events import Event, parse_event
from segue._info import parse_info
from segue._keys import check_queue_name, queue_of
from segue._state import TaskStatus
from segue._wire import TaskField as F
from segue.dashboard import _metrics, _ops_lists, _ops_views, _throughput
from segue.dashboard._security import SESSION_COOKIE, relative_path, root_of, safe_next

if TYPE_CHECKING:
    from jinja2 import Environment
    from starlette.requests import Request

    from segue._app import App
    from segue._handle import TaskHandle
    from segue._heartbeat import WorkerInfo
    from segue._keys import Keyspace
    from segue._state import TaskInfo
    from segue.dashboard._security import Security

FLASH_COOKIE = "segue_flash"
MAX_LIMIT = 200
MAX_OFFSET = 10_000_000
# how far back the task page looks in its queue's event stream for the task's events
EVENT_SCAN = 1000
EVENTS_SHOWN = 50
STATE_SHOWN = 100
# a search by name reads the names of at most this many tasks of the status shown
NAME_SCAN = 1000
STATUS_ORDER = [s.value for s in TaskStatus]


def workflow_id_of(task_id: str) -> str | None:
    """The workflow a step belongs to: step ids are `<queue>:wf-<ulid>.<n>`, or
    `<its queue>:<workflow id>.<n>` for a step on another queue than the workflow's."""
    head, dot, n = task_id.rpartition(".")
    if not dot or not n.isdigit():
        return None
    rest = head.partition(":")[2]
    if rest.startswith("wf-") and "." not in rest:
        return head
    inner = rest.partition(":")[2]
    if not rest.startswith("k:") and inner.startswith("wf-") and "." not in inner:
        return rest
    return None


def parent_id_of(task_id: str) -> str | None:
    """The task that started a sub-task: sub-task ids are `<parent id>.<n>`."""
    head, dot, n = task_id.rpartition(".")
    rest = head.partition(":")[2]
    # a key id (`<queue>:k:<key>`) may hold dots of its own: no parent can be told from it
    if not dot or not n.isdigit() or not rest or rest.startswith("k:"):
        return None
    return None if workflow_id_of(task_id) else head


def _worker_row(w: WorkerInfo) -> dict[str, Any]:
    """A worker as the panel shows it."""
    return {
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "queues": ", ".join(w.queues),
        "running": f"{w.running}/{w.concurrency}",
        "finished": w.finished,
        "last beat": f"{w.age:.1f} s ago" + (" (stale)" if w.stale else ""),
    }


def _signal_waited(info: TaskInfo) -> str | None:
    """The name of the signal a WAITING task waits for (to fill the signal form)."""
    what = info.waiting_for or ""
    if not what.startswith("signal:"):
        return None
    return what.removeprefix("signal:").split(" until ", 1)[0]


def _form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode(), max_num_fields=50).items()}


class Views:
    """The handlers, bound to one App."""

    def __init__(
        self,
        app: App,
        templates: Environment,
        security: Security,
        *,
        page_size: int,
        refresh_seconds: float,
    ) -> None:
        self.app = app
        # raw reads (records, streams) go through the client, not the App's API
        self.client = app._client
        self.templates = templates
        self.security = security
        self.page_size = page_size
        self.refresh_ms = int(refresh_seconds * 1000)
        self.scrapes = _metrics.ScrapeCache(self.client)

    # --- rendering ------------------------------------------------------------------------

    def page(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        root = root_of(request.scope)
        here = relative_path(request.scope)
        if request.url.query:
            here += f"?{request.url.query}"
        # a live refresh must not eat the message the page load is about to show
        live = request.headers.get("x-live") == "1"
        flash = None if live else _read_flash(request.cookies.get(FLASH_COOKIE))
        html = self.templates.get_template(template).render(
            root=root,
            here=here,
            csrf=request.state.csrf,
            user=getattr(request.state, "user", None),
            auth=self.security.enabled,
            flash=flash,
            refresh_ms=self.refresh_ms,
            **context,
        )
        response = HTMLResponse(html, status_code)
        if flash is not None:
            self._set_cookie(response, FLASH_COOKIE, "", root, max_age=0)
        return response

    def _set_cookie(
        self, response: Response, name: str, value: str, root: str, *, max_age: int | None
    ) -> None:
        header = self.security.cookie(name, value, root, max_age=max_age)
        response.raw_headers.append((b"set-cookie", header.encode("latin-1")))

    def back(self, request: Request, to: str | None, kind: str, text: str) -> Response:
        """Redirect after an action, carrying a one-shot message for the next page."""
        root = root_of(request.scope)
        response = RedirectResponse(root + safe_next(to), 303)
        self._set_cookie(
            response, FLASH_COOKIE, quote(f"{kind}:{text}"[:500], safe=""), root, max_age=60
        )
        return response

    def _int(self, request: Request, name: str, default: int, high: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HTTPException(400, f"{name} must be a whole number") from None
        return max(0, min(value, high))

    def _queue(self, request: Request) -> str:
        name = request.query_params.get("queue") or self.app.settings.queue
        try:
            return check_queue_name(name)
        except ConfigurationError as exc:
            raise HTTPException(400, str(exc)) from None

    async def _queue_rows(self, names: list[str]) -> list[dict[str, Any]]:
        snapshots = await _metrics.queue_snapshots(self.client, names)
        return [
            {
                "name": n,
                "counts": s.counts,
                "paused": s.paused,
                "dead": s.dead,
                "ready": s.ready,
                "stats": s.stats,
                "limit_keys": s.keys,
            }
            for n, s in zip(names, snapshots, strict=True)
        ]

    async def _workers(self) -> tuple[list[str], list[dict[str, Any]]] | None:
        """Columns and rows of the workers panel, or None when this App cannot list them."""
        rows = [_worker_row(w) for w in await self.app.workers()]
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        return columns, rows

    # --- pages --------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        offset = self._int(request, "offset", 0, MAX_OFFSET)
        names = await self.app.queues()
        shown = names[offset : offset + self.page_size]
        chart_queue = request.query_params.get("chart") or None
        if chart_queue is not None:
            try:
                check_queue_name(chart_queue)
            except ConfigurationError as exc:
                raise HTTPException(400, str(exc)) from None
        day = request.query_params.get("range") == "24h"
        counted = [chart_queue] if chart_queue is not None else names
        if day:
            throughput = await _throughput.read_day(self.client, counted)
        else:
            throughput = await _throughput.read(self.client, counted)
        return self.page(
            request,
            "overview.html",
            title="Overview",
            throughput=throughput,
            chart=Markup(_throughput.svg(throughput)),  # numbers and times only
            chart_queue=chart_queue,
            chart_minutes=_throughput.MINUTES,
            day=day,
            queues=await self._queue_rows(shown),
            workers=await self._workers(),
            total=len(names),
            offset=offset,
            limit=self.page_size,
            statuses=_metrics.STATUSES,
        )

    async def tasks(self, request: Request) -> Response:
        queue = self._queue(request)
        raw = request.query_params.get("status") or "running"
        if raw not in STATUS_ORDER:
            raise HTTPException(400, f"unknown status {raw!r}")
        status = TaskStatus(raw)
        offset = self._int(request, "offset", 0, MAX_OFFSET)
        limit = self._int(request, "limit", self.page_size, MAX_LIMIT) or self.page_size
        search = (request.query_params.get("q") or "").strip()[:200]
        if search and ":" in search and await self._task_exists(search):
            root = root_of(request.scope)
            return RedirectResponse(f"{root}/tasks/{quote(search, safe=':')}", 303)
        scanned: int | None = None
        matched: int | None = None
        oldest_first = request.query_params.get("order") == "oldest"
        if search:
            infos, scanned, matched = await self._named(status, queue, search, offset, limit + 1)
        elif status.is_final and not oldest_first:
            # ended tasks newest first: what an operator looks for is what just happened
            infos = await _ops_lists.ended_newest(self.client, status, queue, offset, limit + 1)
        else:
            # one more than shown tells whether a next page exists, without counting
            infos = await self.app.tasks(status, queue=queue, offset=offset, limit=limit + 1)
        counts = await self.app.queue(queue).counts()
        return self.page(
            request,
            "tasks.html",
            title=f"{queue}: {status}",
            queue=queue,
            status=status.value,
            statuses=STATUS_ORDER,
            counts=counts,
            tasks=infos[:limit],
            has_next=len(infos) > limit,
            offset=offset,
            limit=limit,
            search=search,
            scanned=scanned,
            matched=matched,
            bounded=scanned is not None and counts.get(status.value, 0) > scanned,
            order="oldest" if oldest_first else "newest",
            now=await _ops_reads.server_ms(await self.client.reads()),
        )

    async def _task_exists(self, task_id: str) -> bool:
        try:
            await (await self.app.task_handle(task_id)).info()
        except (ConfigurationError, TaskNotFound):
            return False
        return True

    async def _named(
        self, status: TaskStatus, queue: str, search: str, offset: int, limit: int
    ) -> tuple[list[TaskInfo], int, int]:
        """A page of the tasks of this status whose name contains `search` (any case),
        among the first NAME_SCAN of the status; how many ids were looked at, and how many
        matched. Only the names (and statuses) of those are read, then the whole records of
        the page."""
        broker = await self.client.broker()
        reads = broker.reads
        wanted = search.casefold()
        scanned = 0
        matches: list[tuple[Keyspace, str]] = []
        # a sharded queue's shards in turn, NAME_SCAN ids in all
        for shard in (await broker.shards.read(queue)).serving(queue):
            ks = reads.keyspace(shard)
            ids = await reads.list_ids(ks, status.value, 0, NAME_SCAN - scanned)
            scanned += len(ids)
            fields = await reads.task_fields(ks, ids, [F.NAME, F.STATUS]) if ids else []
            matches += [
                (ks, task_id)
                for task_id, (name, st) in zip(ids, fields, strict=True)
                if name is not None
                and wanted in name.decode(errors="replace").casefold()
                # a suspended task is looked for among the queued ones: keep what it says
                and (status.is_final or st == status.value.encode())
            ]
            if scanned >= NAME_SCAN:
                break
        infos: list[TaskInfo] = []
        for ks, task_id in matches[offset : offset + limit]:
            rec = await reads.task_record(ks, task_id)
            if rec:
                infos.append(parse_info(task_id, rec, self.client.tasks))
        return infos, scanned, len(matches)

    async def task(self, request: Request) -> Response:
        task_id: str = request.path_params["task_id"]
        handle = await self._task_handle(task_id)
        info = await handle.info()
        state = {} if info.status.is_final else await handle._state_shown(STATE_SHOWN)
        return self.page(
            request,
            "task.html",
            title=f"{info.name} {info.id}",
            task=info,
            state=state,
            state_cut=len(state) >= STATE_SHOWN,
            events=_ops_lists.group_progress(await self._events_of(info)),
            workflow_id=workflow_id_of(info.id),
            parent_id=parent_id_of(info.id),
            # one id per form shown: a form sent twice (a reload, a double click) delivers once
            signal_id=uuid.uuid4().hex,
            signal_name=_signal_waited(info),
        )

    async def download(self, request: Request) -> Response:
        """A task's stored arguments or result as a JSON file (read from the payload store
        when offloaded): the task page links it for a value too big to show."""
        what: str = request.path_params["what"]
        if what not in ("args", "result"):
            raise HTTPException(404, "what to download is args or result")
        task_id: str = request.path_params["task_id"]
        handle = await self._task_handle(task_id)
        try:
            data = await handle.download("args" if what == "args" else "result")
        except SegueError as exc:
            raise HTTPException(404, str(exc)) from None
        name = f"{task_id.replace(':', '_')}.{what}.json"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(data, media_type="application/json", headers=headers)

    async def _task_handle(self, task_id: str) -> TaskHandle[Any]:
        try:
            return await self.app.task_handle(task_id)
        except ConfigurationError:
            raise HTTPException(404, f"{task_id!r} is not a task id") from None

    async def _events_of(self, info: TaskInfo) -> list[Event]:
        """The task's latest events, oldest first, from a bounded look back over its
        queue's stream (a task whose events are older than that shows none)."""
        reads = await self.client.reads()
        entries = await reads.recent_events(reads.keyspace(info.queue), EVENT_SCAN)
        mine: list[Event] = []
        for entry_id, fields in entries:
            if fields.get(b"id", b"").decode() == info.id:
                mine.append(parse_event(info.queue, entry_id, fields))
                if len(mine) == EVENTS_SHOWN:
                    break
        return mine[::-1]

    async def workflow(self, request: Request) -> Response:
        wf_id: str = request.path_params["workflow_id"]
        try:
            handle = await self.app.workflow_handle(wf_id)
        except ConfigurationError:
            raise HTTPException(404, f"{wf_id!r} is not a workflow id") from None
        offset = self._int(request, "offset", 0, MAX_OFFSET)
        status = await handle.status()
        steps = await handle.steps(offset=offset, limit=self.page_size)
        reads = await self.client.reads()
        rec = await reads.workflow_record(reads.keyspace(handle.queue), wf_id)
        shape = _ops_lists.shape_of(rec) if rec else None
        # the drawing names each step by its number: their statuses, all in one read
        by_number: dict[int, TaskInfo] = {}
        if shape is not None:
            everything = steps if len(steps) >= await handle.step_count() else None
            for info in everything or await handle.steps():
                by_number[int(info.id.rpartition(".")[2])] = info
        result: Any = None
        if status is TaskStatus.SUCCEEDED:
            try:
                result = {"value": await handle.result(timeout=1)}
            except SegueError as exc:  # a result not kept (ttl=0), or expired meanwhile
                result = {"missing": str(exc)}
        return self.page(
            request,
            "workflow.html",
            title=f"workflow {wf_id}",
            workflow_id=wf_id,
            status=status,
            steps=steps,
            total=await handle.step_count(),
            offset=offset,
            limit=self.page_size,
            shape=shape,
            by_number=by_number,
            result=result,
        )

    async def dead(self, request: Request) -> Response:
        queue = self._queue(request)
        offset = self._int(request, "offset", 0, MAX_OFFSET)
        infos = await self.app.dead_letters(queue, offset=offset, limit=self.page_size + 1)
        reads = await self.client.reads()
        return self.page(
            request,
            "dead.html",
            title=f"{queue}: dead letters",
            queue=queue,
            tasks=infos[: self.page_size],
            has_next=len(infos) > self.page_size,
            total=sum(
                [
                    await reads.dead_count(reads.keyspace(name))
                    for name in (await self.client.broker()).shards.cached_serving(queue)
                ]
            ),
            offset=offset,
            limit=self.page_size,
        )

    async def find(self, request: Request) -> Response:
        """Go to the task or workflow whose id was typed in the search box."""
        wanted = (request.query_params.get("id") or "").strip()
        root = root_of(request.scope)
        try:
            queue_of(wanted)
        except ConfigurationError:
            return self.back(request, "/", "error", f"{wanted!r} is not a task or workflow id")
        kind = "workflows" if workflow_id_of(wanted + ".1") == wanted else "tasks"
        return RedirectResponse(f"{root}/{kind}/{quote(wanted, safe=':')}", 303)

    # --- actions --------------------------------------------------------------------------

    async def task_action(self, request: Request) -> Response:
        form = _form(await request.body())
        action, task_id = form.get("action", ""), form.get("id", "")
        if action not in ("pause", "resume", "cancel", "retry", "delete", "signal"):
            raise HTTPException(400, f"unknown task action {action!r}")
        handle = await self._task_handle(task_id)
        if action == "delete":
            return await _ops_views.delete(self, request, handle, form.get("next"))
        if action == "signal":
            return await _ops_views.signal(self, request, handle, form)
        try:
            status = await getattr(handle, action)(f"{action} from the dashboard")
        except (InvalidTransition, TaskNotFound) as exc:
            return self.back(request, form.get("next"), "error", str(exc))
        if status is TaskStatus.RUNNING and action in ("pause", "cancel"):
            # a running task carries the command out itself, at its next checkpoint
            text = f"{action} requested: task {task_id} stops at its next checkpoint"
        else:
            text = f"{action}: task {task_id} is {status}"
        return self.back(request, form.get("next"), "ok", text)

    async def queue_action(self, request: Request) -> Response:
        form = _form(await request.body())
        action, name = form.get("action", ""), form.get("queue", "")
        if action not in ("pause", "resume", "purge"):
            raise HTTPException(400, f"unknown queue action {action!r}")
        try:
            queue = self.app.queue(name)
        except ConfigurationError as exc:
            raise HTTPException(400, str(exc)) from None
        if action == "purge":
            n = await queue.purge("purged from the dashboard")
            return self.back(request, form.get("next"), "ok", f"queue {name}: {n} cancelled")
        await (queue.pause() if action == "pause" else queue.resume())
        done = "paused" if action == "pause" else "resumed"
        return self.back(request, form.get("next"), "ok", f"queue {name} {done}")

    async def workflow_action(self, request: Request) -> Response:
        form = _form(await request.body())
        action, wf_id = form.get("action", ""), form.get("id", "")
        if action not in ("pause", "resume", "cancel"):
            raise HTTPException(400, f"unknown workflow action {action!r}")
        try:
            handle = await self.app.workflow_handle(wf_id)
            status = await getattr(handle, action)(reason=f"{action} from the dashboard")
        except ConfigurationError:
            raise HTTPException(404, f"{wf_id!r} is not a workflow id") from None
        except (InvalidTransition, TaskNotFound) as exc:
            return self.back(request, form.get("next"), "error", str(exc))
        return self.back(request, form.get("next"), "ok", f"{action}: workflow is {status}")

    # --- signing in -----------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if not self.security.enabled:
            return RedirectResponse(root_of(request.scope) + "/", 303)
        return self.page(
            request, "login.html", title="Sign in", next=safe_next(request.query_params.get("next"))
        )

    async def login(self, request: Request) -> Response:
        form = _form(await request.body())
        to = safe_next(form.get("next"))
        who = self.security.client_of(request)
        user = form.get("user", "")
        ok, wait = await self.security.password_check(who, user, form.get("password", ""))
        if wait > 0:
            refused = self.page(
                request, "login.html", 429, title="Sign in", next=to, throttled=int(wait) + 1
            )
            refused.headers["retry-after"] = str(int(wait) + 1)
            return refused
        if not ok:
            return self.page(request, "login.html", 401, title="Sign in", next=to, failed=True)
        root = root_of(request.scope)
        response = RedirectResponse(root + to, 303)
        session = await self.security.new_session(user)
        max_age = int(self.security.session_seconds)
        self._set_cookie(response, SESSION_COOKIE, session, root, max_age=max_age)
        return response

    async def logout(self, request: Request) -> Response:
        root = root_of(request.scope)
        if self.security.enabled:
            await self.security.end_sessions()  # the cookie is void wherever it was copied
        response = RedirectResponse(f"{root}/login", 303)
        self._set_cookie(response, SESSION_COOKIE, "", root, max_age=0)
        return response

    # --- open to all --------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        try:
            reads = await self.client.reads()
            await asyncio.wait_for(reads.ping(), 5)
        except (SegueError, TimeoutError):
            return JSONResponse({"status": "unavailable"}, 503)
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        return Response(await self.scrapes.get(), media_type=CONTENT_TYPE_LATEST)

    # --- errors ---------------------------------------------------------------------------

    async def error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            code, text = exc.status_code, str(exc.detail)
        elif isinstance(exc, TaskNotFound):
            code, text = 404, str(exc)
        elif isinstance(exc, BrokerError):
            code, text = 503, f"the server is unreachable: {exc}"
        else:
            code, text = 500, str(exc)
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"error": text}, code)
        return self.page(request, "error.html", code, title=f"error {code}", message=text)


def _read_flash(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    kind, _, text = unquote(raw).partition(":")
    return {"kind": "error" if kind == "error" else "ok", "text": text}
