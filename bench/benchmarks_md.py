"""BENCHMARKS.md is shared by every bench: each one owns one section, between its own markers,
and rewrites only that section (appending it the first time).

    from benchmarks_md import write_section       # bench scripts run as `python bench/x.py`
    write_section("bench_graders", "Graders", markdown_body)
"""

from __future__ import annotations

import platform
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for a section's machine line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def write_section(key: str, title: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the text between `<!-- BEGIN key -->` and `<!-- END key -->` with `## title` + body."""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    section = f"{begin}\n## {title}\n\n{body.strip()}\n{end}"
    doc = path.read_text() if path.exists() else "# Benchmarks\n\nEach section is written by the bench named in it.\n"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + section + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(doc)
