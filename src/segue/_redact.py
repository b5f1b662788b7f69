"""Secrets out of every message and repr: a server URL is shown with its passwords masked."""

from __future__ import annotations

import re

# `?password=`, `&sentinel_password=`, `ssl_password=`...: any query option naming a password
_QUERY_SECRET = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` with the password of its user part and of every `*password=` option replaced by
    `***`; the rest (scheme, user, hosts, path) stays, so a message still says which server."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, tail = _split_authority(rest)
        userinfo, at, hosts = authority.rpartition("@")
        if at and ":" in userinfo:
            authority = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
        rest = authority + slash + tail
    return _QUERY_SECRET.sub(r"\1***", f"{scheme}{sep}{rest}")


def _split_authority(rest: str) -> tuple[str, str, str]:
    # a password may hold '/' or '?': the authority ends at the first of them after the last '@'
    at = rest.rfind("@")
    cut = len(rest)
    for mark in "/?#":
        i = rest.find(mark, at + 1)
        if i != -1:
            cut = min(cut, i)
    return rest[:cut], rest[cut : cut + 1], rest[cut + 1 :]
