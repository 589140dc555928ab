"""Running a command-line tool as a real process, as a user would (``python -m tools.<name>``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_tool(module: str, *args: str | Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m tools.<module> args…`` in the repository, its output captured as text; the exit code is the
    caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", f"tools.{module}", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
