"""A release's source, from this repository's history, for tests that run its worker."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests._workers import ROOT

PREVIOUS = "a9921ef"  # the release before the typed-core redesign (issue 12)


def extract(release: str, out: Path) -> Path:
    """`src/` of `release` (its segue package) under `out`, by `git archive`."""
    # CI tests a full `git clone` of main, so the history is there; a copy without it (an
    # sdist, a shallow clone) cannot run such a test, and says why instead of skipping it
    tar = out / "src.tar"
    found = subprocess.run(
        ["git", "-C", str(ROOT), "archive", f"--output={tar}", release, "src/segue"],
        capture_output=True,
        check=False,
    )
    assert found.returncode == 0, (
        f"the release {release} is not in the git history of {ROOT} "
        f"(this test needs a full clone): {found.stderr.decode(errors='replace')}"
    )
    subprocess.run(["tar", "-x", "-f", str(tar), "-C", str(out)], check=True)
    assert (out / "src" / "segue" / "_scripts" / "claim.lua").exists()
    return out / "src"
