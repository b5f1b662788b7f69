from __future__ import annotations

import segue


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in dir(segue) if not n.startswith("_")} | {"__version__"}
    assert set(segue.__all__) == public
    assert segue.__all__ == sorted(segue.__all__)
