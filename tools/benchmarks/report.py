"""The result type of one benchmark section and the markdown page that collects them."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class BenchSection:
    """One measured target: a table of results and whether each target was met."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    targets: dict[str, bool] = field(default_factory=dict)  # "ingest >= 0.5x copy" -> met?
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "---|" * len(self.headers))
        lines.extend("| " + " | ".join(r) + " |" for r in self.rows)
        if self.targets:
            lines.append("")
            lines.extend(f"- target **{k}**: {'met' if ok else 'NOT met'}" for k, ok in self.targets.items())
        if self.notes:
            lines.append("")
            lines.extend(f"- {n}" for n in self.notes)
        lines.append("")
        return "\n".join(lines)


def percentiles_us(samples_ns: list[int] | np.ndarray) -> tuple[float, float, float]:
    """p50, p99 and max of nanosecond samples, in microseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_block(command: str) -> str:
    """Where and how the numbers were produced, so a reader can reproduce or distrust them."""
    return "\n".join(
        [
            f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
            f"- python {sys.version.split()[0]}, numpy {np.__version__}",
            f"- command: `{command}`",
            f"- run at: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        ]
    )


def write_page(path: Path, command: str, sections: list[BenchSection], *, merge: bool = False) -> None:
    """Rewrite the page with ``sections``; ``merge`` (a ``--only`` run) replaces only the sections of the same
    title in the existing page (appending new ones) and stamps each with its own machine and command."""
    if merge and path.is_file():
        _merge_page(path, command, sections)
        return
    head = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m tools.benchmarks`); every ratio compares against a baseline measured",
        "in the same run on the same machine. Do not edit by hand: rerun the command.",
        "",
        machine_block(command),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head) + "\n".join(s.to_markdown() for s in sections))


def _merge_page(path: Path, command: str, sections: list[BenchSection]) -> None:
    text = path.read_text()
    head, *parts = text.split("\n## ")
    blocks = {p.split("\n", 1)[0]: "## " + p for p in parts}
    stamp = "\n".join(["", "This section alone was rerun:", "", machine_block(command), ""])
    for s in sections:
        blocks[s.title] = s.to_markdown() + stamp + "\n"
    path.write_text(head.rstrip("\n") + "\n" + "\n".join(b.rstrip("\n") + "\n" for b in blocks.values()))
