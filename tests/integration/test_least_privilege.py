"""The documented ACL user (the one every fixture logs in as) is denied what segue does not
need, and the rules in docs/production.md are the ones the suite runs under."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from tests._support import ACL_PASSWORD, ACL_RULES, Engine

DOCS = Path(__file__).resolve().parents[2] / "docs" / "production.md"


@pytest.mark.parametrize(
    "command",
    [
        ("RANDOMKEY",),
        ("DBSIZE",),
        ("SCRIPT", "FLUSH"),
        ("SCRIPT", "KILL"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "DELETE", "x"),
        ("FUNCTION", "LIST"),
        ("PUBSUB", "CHANNELS"),
        ("KEYS", "*"),
        ("FLUSHALL",),
    ],
)
def test_the_least_privilege_user_is_refused(segue_valkey: Engine, command: tuple[str]) -> None:
    with (
        redis.Redis.from_url(segue_valkey.url) as client,
        pytest.raises(redis.exceptions.NoPermissionError),
    ):
        client.execute_command(*command)


def test_the_documented_rules_are_the_suites() -> None:
    block = re.search(r"```\nACL SETUSER segue (.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    documented = block.group(1).split()
    assert documented == [r.replace(ACL_PASSWORD, "CHANGE-ME") for r in ACL_RULES]
