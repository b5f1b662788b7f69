"""Where two callgrind dumps differ, function by function (exclusive instructions).

    python bench/callgrind_diff.py A_DUMP B_DUMP [--top 40]

Give it the last dump of two `server_instructions.py --keep DIR --server
/usr/bin/redis-server` runs (the drain stage): Debian's redis-server exports its function
names, so the rows name Redis's own functions; the Lua interpreter's are static and show as
addresses (the largest is the bytecode loop). callgrind_annotate lumps such a dump under
one function, so this reads the format itself.
"""

from __future__ import annotations

import argparse
import collections
import re


def exclusive_costs(path: str) -> collections.Counter[str]:
    names: dict[str, str] = {}
    cost: collections.Counter[str] = collections.Counter()
    fn: str | None = None
    skip_next = False  # the line after calls= is the callee's inclusive cost, not ours
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line.strip())
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                if m.group(1) == "fn":
                    fn = m.group(2)
                continue
            if line.startswith("calls="):
                skip_next = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn is not None:
                    cost[fn] += int(parts[1])
    return collections.Counter({names.get(k, k): v for k, v in cost.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--top", type=int, default=40)
    ns = parser.parse_args()
    a, b = exclusive_costs(ns.a), exclusive_costs(ns.b)
    print(f"total {sum(a.values()):,} -> {sum(b.values()):,}")
    for k in sorted(set(a) | set(b), key=lambda k: -abs(b[k] - a[k]))[: ns.top]:
        print(f"{a[k]:>14,} {b[k]:>14,} {b[k] - a[k]:>+14,}  {k[:70]}")


if __name__ == "__main__":
    main()
