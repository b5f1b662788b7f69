"""Worker lifespan: resources a worker opens once at start and closes at shutdown.

`@app.lifespan` turns an async generator function (one `yield` of the resource) into a
`Resource[T]`; tasks reach the value with `ctx.get(resource)`, typed as `T`. Resources
open in the order they were declared and close in the reverse order, after the last task.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from segue._errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

T = TypeVar("T")


class Resource(Generic[T]):
    """A value a worker opens once for its tasks (an HTTP client, a database pool)."""

    __slots__ = ("_factory", "name")

    def __init__(self, factory: Callable[[], AsyncIterator[T]], name: str) -> None:
        self._factory = factory
        self.name = name

    def __repr__(self) -> str:
        return f"<Resource {self.name}>"

    def open(self) -> contextlib.AbstractAsyncContextManager[T]:
        return contextlib.asynccontextmanager(self._factory)()


async def open_all(
    resources: Sequence[Resource[Any]], stack: contextlib.AsyncExitStack
) -> dict[Resource[Any], Any]:
    """Open every resource on `stack` (closed in reverse when it closes); a failure names
    the resource and stops the worker before it takes any task."""
    values: dict[Resource[Any], Any] = {}
    for res in resources:
        try:
            values[res] = await stack.enter_async_context(res.open())
        except Exception as exc:
            raise ConfigurationError(
                f"worker start-up failed: lifespan {res.name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    return values
