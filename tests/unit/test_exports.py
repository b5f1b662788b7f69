from __future__ import annotations

import types

import segue


def test_all_lists_exactly_the_public_names() -> None:
    # submodules (segue.testing, once imported) are reached by their path, not __all__
    names = (n for n in dir(segue) if not isinstance(getattr(segue, n), types.ModuleType))
    public = {n for n in names if not n.startswith("_")} | {"__version__"}
    assert set(segue.__all__) == public
    assert segue.__all__ == sorted(segue.__all__)


def test_public_classes_name_the_package_not_a_private_module() -> None:
    classes = [getattr(segue, n) for n in segue.__all__ if isinstance(getattr(segue, n), type)]
    assert len(classes) > 40
    for cls in classes:
        assert f"{cls.__module__}.{cls.__qualname__}" == f"segue.{cls.__name__}"
    assert repr(segue.App) == "<class 'segue.App'>"


def test_settings_from_env_reads_typed_fields_after_the_module_rename() -> None:
    # Settings resolves its own annotations (Path, float | None) though it says it is segue's
    settings = segue.Settings.from_env({"SEGUE_HOME": "/tmp/x", "SEGUE_RESULT_TTL_SECONDS": "none"})
    assert str(settings.home) == "/tmp/x"
    assert settings.result_ttl_seconds is None
