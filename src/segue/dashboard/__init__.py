"""The segue web dashboard (optional extra `segue[dashboard]`): `create_app(app, auth=...)`
returns an ASGI app that shows the App's queues, tasks and workflows and steers them."""

try:
    import jinja2  # noqa: F401
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"the segue dashboard needs its optional dependencies ({exc.name} is missing): "
        "pip install 'segue[dashboard]'"
    ) from exc

from segue.dashboard._app import create_app

__all__ = ["create_app"]
