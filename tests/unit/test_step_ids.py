"""Step ids name their queue, and the dashboard finds the workflow from any step's id."""

from __future__ import annotations

from segue import App
from segue._keys import queue_of
from segue._workflow import _step_ids
from segue.dashboard._views import parent_id_of, workflow_id_of


def test_a_step_on_another_queue_names_its_queue_and_its_workflow() -> None:
    app = App("ids", redis_url="redis://127.0.0.1:1/0", queue="main")

    @app.task(name="t")
    def t() -> None: ...

    wf = "main:wf-01JDX0000000000000000000"
    new_id = _step_ids("main", wf)
    here, there = new_id(t.call()), new_id(t.options(queue="other").call())
    assert (here, there) == (f"{wf}.1", f"other:{wf}.2")
    assert (queue_of(here), queue_of(there)) == ("main", "other")
    assert workflow_id_of(here) == workflow_id_of(there) == wf
    assert parent_id_of(there) is None
    assert workflow_id_of("main:k:wf-x.1") is None  # a key id is no step
