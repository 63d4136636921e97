"""Print one conformance table from the columns every test environment left behind.

Queues whose dependencies clash (arq needs redis-py < 6, bullmq >= 6.2) run the
conformance suite in their own environments (``noxfile.py``); with
``IDEMSEND_CONFORMANCE_DIR`` set, each run writes its columns there as JSON.

    python -m harness.conformance DIR      # exits 1 if a scenario differs between queues
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from harness.queues import drivers

#: A cell's timing, "(1.2s)", differs from run to run and queue to queue: not compared.
_TIMING = re.compile(r"\s*\(\d+(\.\d+)?s\)")


def merge(directory: Path) -> dict[str, dict[str, str]]:
    """scenario -> queue -> cell, from every ``conformance-*.json`` in ``directory``."""
    table: dict[str, dict[str, str]] = {}
    for path in sorted(directory.glob("conformance-*.json")):
        for scenario, row in json.loads(path.read_text()).items():
            table.setdefault(scenario, {}).update(row)
    return table


def render(table: dict[str, dict[str, str]]) -> str:
    """A markdown table, queues in the registry's order."""
    order = [name for name in drivers() if any(name in row for row in table.values())]
    lines = ["| scenario | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for scenario, row in table.items():
        lines.append(f"| {scenario} | " + " | ".join(row.get(q, "not run") for q in order) + " |")
    return "\n".join(lines)


def differences(table: dict[str, dict[str, str]]) -> list[str]:
    """Scenarios whose cells (timings and retry counts aside) differ between queues."""
    out = []
    for scenario, row in table.items():
        cells = {_TIMING.sub("", cell) for cell in row.values()}
        if scenario != "retries exhausted" and len(cells) > 1:
            out.append(f"{scenario}: " + "; ".join(f"{q}: {c}" for q, c in row.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where the environments wrote conformance-*.json")
    args = parser.parse_args(argv)
    table = merge(args.directory)
    if not table:
        print(f"no conformance results in {args.directory}", file=sys.stderr)
        return 2
    print(render(table))
    diff = differences(table)
    for line in diff:
        print(f"DIFFERS: {line}", file=sys.stderr)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
