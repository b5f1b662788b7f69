"""Stored strings shown at a terminal: whoever wrote a task's name, error or arguments may
have put escape sequences or Rich markup in them, so they are shown as inert text."""

from __future__ import annotations

import re

from rich.text import Text

# C0 and C1 controls (ESC starts terminal sequences; CR rewrites a line) but tab and newline,
# and the bidirectional overrides that make text read differently from what it holds
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`)."""
    return _UNSAFE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


def plain(text: str, style: str = "") -> Text:
    """A Rich Text of a stored string: cleaned, and never read as markup."""
    return Text(clean(text), style=style)
