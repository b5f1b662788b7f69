from __future__ import annotations

import types

import segue


def test_all_lists_exactly_the_public_names() -> None:
    # submodules (segue.testing, once imported) are reached by their path, not __all__
    names = (n for n in dir(segue) if not isinstance(getattr(segue, n), types.ModuleType))
    public = {n for n in names if not n.startswith("_")} | {"__version__"}
    assert set(segue.__all__) == public
    assert segue.__all__ == sorted(segue.__all__)
