from __future__ import annotations

from pathlib import Path

import pytest

from segue import ConfigurationError, Settings
from segue._keys import Keyspace, check_queue_name, queue_of


def test_from_env_reads_segue_variables() -> None:
    s = Settings.from_env(
        {
            "SEGUE_REDIS_URL": "redis://h:1/0",
            "SEGUE_CONCURRENCY": "7",
            "SEGUE_LEASE_SECONDS": "2.5",
            "SEGUE_RESULT_TTL_SECONDS": "none",
            "SEGUE_HOME": "/tmp/x",
            "OTHER": "ignored",
        }
    )
    assert s.redis_url == "redis://h:1/0"
    assert s.concurrency == 7 and s.lease_seconds == 2.5
    assert s.result_ttl_seconds is None and s.home == Path("/tmp/x")


def test_overrides_win_and_bad_values_say_which_variable() -> None:
    assert Settings.from_env({"SEGUE_CONCURRENCY": "7"}, concurrency=3).concurrency == 3
    with pytest.raises(ConfigurationError, match="SEGUE_CONCURRENCY"):
        Settings.from_env({"SEGUE_CONCURRENCY": "many"})
    with pytest.raises(ConfigurationError, match="prefix"):
        Settings(prefix="a:b")


def test_cluster_is_read_from_the_url_scheme() -> None:
    assert Settings.from_url("redis+cluster://127.0.0.1:7000").cluster
    assert not Settings.from_url("redis://127.0.0.1:7000").cluster


def test_keys_share_the_queue_hash_tag() -> None:
    ks = Keyspace("segue", "emails")
    assert ks.task("emails:01ABC") == "segue:{emails}:task:emails:01ABC"
    assert ks.pending == (
        "segue:{emails}:q:high",
        "segue:{emails}:q:normal",
        "segue:{emails}:q:low",
    )
    assert all("{emails}" in k for k in (ks.scheduled, ks.leases, ks.wake, *ks.done))


def test_task_ids_name_their_queue() -> None:
    assert queue_of("emails:01ABC") == "emails"
    assert queue_of("emails:k:report:1") == "emails"
    with pytest.raises(ConfigurationError, match="not a segue task id"):
        queue_of("nocolon")
    with pytest.raises(ConfigurationError, match="queue name"):
        check_queue_name("a{b}")


def test_size_and_length_limits_come_from_the_environment_and_are_checked() -> None:
    s = Settings.from_env({"SEGUE_MAX_RESULT_BYTES": "2048", "SEGUE_MAX_QUEUE_LENGTH": "500"})
    assert (s.max_result_bytes, s.max_queue_length) == (2048, 500)
    assert Settings.from_env({"SEGUE_MAX_QUEUE_LENGTH": "none"}).max_queue_length is None
    assert Settings().max_queue_length is None and Settings().max_result_bytes == 1 << 20
    with pytest.raises(ConfigurationError, match="max_queue_length must be at least 1"):
        Settings(max_queue_length=0)
    with pytest.raises(ConfigurationError, match="max_result_bytes must be at least 1"):
        Settings(max_result_bytes=0)


def test_every_node_a_cluster_url_lists_seeds_the_discovery() -> None:
    from segue._broker import _cluster_seeds

    url = "redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002,h4"
    assert _cluster_seeds(url) == [("10.0.0.2", 7001), ("::1", 7002), ("h4", 6379)]
    assert _cluster_seeds("redis+cluster://h1:7000") == []
    with pytest.raises(ConfigurationError, match="lists a node 'h2:x'"):
        _cluster_seeds("redis+cluster://u:secret@h1:7000,h2:x")
