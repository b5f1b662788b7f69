from __future__ import annotations

import types

import segue


def test_all_lists_exactly_the_public_names() -> None:
    # subpackages (segue.dashboard) become attributes once imported: they are not names
    # of the package's API
    public = {
        n
        for n in dir(segue)
        if not n.startswith("_") and not isinstance(getattr(segue, n), types.ModuleType)
    } | {"__version__"}
    assert set(segue.__all__) == public
    assert segue.__all__ == sorted(segue.__all__)
