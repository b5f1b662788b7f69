"""The reference a record holds for an offloaded value, and the offload settings' checks."""

from __future__ import annotations

import pytest

from segue import ConfigurationError, Settings
from segue._blobs import REF_HEAD, Ref, human_size, is_ref, make_ref, parse_ref
from segue._offload import PENDING_SECONDS
from segue._scripts import load
from segue._wire import NAME_MARK, plain_name


def test_a_reference_round_trips_and_is_told_from_any_json_by_its_head() -> None:
    ref = Ref("redis", "q:k:a b", "result.7", 5 * 1024 * 1024, 5)
    data = make_ref(ref)
    assert data.startswith(REF_HEAD) and is_ref(data) and is_ref(data.decode())
    assert parse_ref(data) == ref
    for plain in (b'{"ref": 1}', b'[["x"],{}]', b'"\\u0000ref"', b"null"):
        assert not is_ref(plain)
    with pytest.raises(ValueError):
        parse_ref(b'{"\\u0000ref": 3}')


def test_sizes_read_as_a_person_reads_them() -> None:
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(5 * 1024 * 1024) == "5.0 MiB"


def test_the_mark_of_an_offloaded_record_is_stripped_from_its_name() -> None:
    assert plain_name("reports.build" + NAME_MARK) == "reports.build"
    assert plain_name("reports.build") == "reports.build"


def test_offload_bytes_must_fit_what_a_record_holds() -> None:
    assert Settings(offload_bytes=256 * 1024).max_offload_bytes == 64 * 1024 * 1024
    with pytest.raises(ConfigurationError, match="offload_bytes"):
        Settings(offload_bytes=2 * 1024 * 1024)
    with pytest.raises(ConfigurationError, match="offload_bytes"):
        Settings(offload_bytes=0)
    with pytest.raises(ConfigurationError, match="max_offload_bytes"):
        Settings(max_offload_bytes=0)
    assert Settings.from_env({"SEGUE_OFFLOAD_BYTES": "262144"}).offload_bytes == 262144


def test_the_reconciler_gives_an_orphan_the_pending_ttl_of_the_chunk_store() -> None:
    assert f"local BLOB_PENDING_MS = {PENDING_SECONDS * 1000}\n" in load("reconcile").source
