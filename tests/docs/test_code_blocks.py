"""Every Python block of the README and docs/ runs as written, in order, page by page, with
a worker for the Apps it defines (tests/docs/run_blocks.py), against the test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._support import Engine

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    p
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if re.search(r"^```python$", p.read_text(), re.M)
]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_block_of_the_page_runs(
    page: Path, segue_valkey: Engine, queue_name: str, tmp_path: Path
) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    # the page's own keys (its queue names are the docs': "default", "emails"...), so the
    # admin user, whose keys are not limited to the prefix `segue`
    url = segue_valkey.admin_url
    env |= {"SEGUE_REDIS_URL": url, "SEGUE_PREFIX": f"docs-{queue_name.replace(':', '-')}"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "src"), str(ROOT)])
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "docs" / "run_blocks.py"), str(page)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
