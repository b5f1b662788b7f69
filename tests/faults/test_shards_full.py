"""The full-size run of tests/integration/test_shards_processes.py: 20,000 tasks from 2
producers into a 16-shard queue on the 3-primary cluster, drained by 3 worker processes,
each run once (scripts/faults --full; CI runs the 2,000-task sibling)."""

from __future__ import annotations

import pytest

from tests._support import Engine
from tests.integration.test_shards_processes import drain_sharded_queue

pytestmark = [pytest.mark.full_only, pytest.mark.slow]


async def test_20000_tasks_on_a_16_shard_queue_each_run_once(
    segue_cluster: Engine, segue_valkey: Engine, queue_name: str
) -> None:
    await drain_sharded_queue(segue_cluster, segue_valkey.admin_url, queue_name, 20_000)
