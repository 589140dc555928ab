"""``deploy/edge-daemon.service``: ``systemd-analyze security --offline=yes`` rates it MEDIUM or better, every
remaining exposure is explained in docs/daemon.md, and ``systemd-analyze verify`` accepts it.

``verify`` also checks that ExecStart's binary exists; the unit names the installed path (/opt/edge-daemon/…), which
a development machine does not have. The test first shows that this missing binary is the original unit's only
complaint, then verifies a temporary copy whose ExecStart points at this checkout's ``edge-daemon`` entry point.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.plant.rollout import EXIT_ROLLOUT

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "edge-daemon.service"
DOCS = ROOT / "docs" / "daemon.md"
INSTALLED = "/opt/edge-daemon/.venv/bin/edge-daemon"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed here (Debian/Ubuntu: apt-get install systemd)"
)
# systemd's levels: SAFE, OK, MEDIUM, EXPOSED, UNSAFE (exposure 0.0–10.0)
GOOD_ENOUGH = {"SAFE", "OK", "MEDIUM"}


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_unit_rates_medium_or_better_and_docs_explain_every_remaining_exposure() -> None:
    out = _analyze("security", "--offline=yes", str(UNIT))
    assert out.returncode == 0, out.stderr
    overall = re.search(r"Overall exposure level for edge-daemon\.service: (\d+\.\d) (\w+)", out.stdout)
    assert overall is not None, out.stdout[-2000:]
    assert overall.group(2) in GOOD_ENOUGH and float(overall.group(1)) < 7.0, overall.group(0)
    remaining = re.findall(r"^✗ (\w+)=", out.stdout, re.M)
    assert remaining, "some exposure always remains (network, devices): the docs table lists it"
    table = DOCS.read_text().split("### Remaining exposure", 1)[1].split("\n## ", 1)[0]
    unexplained = sorted({name for name in remaining if f"`{name}=" not in table})
    assert not unexplained, f"docs/daemon.md does not explain: {unexplained}"


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert re.search(r"^RestartPreventExitStatus=2$", text, re.M), "exit 2 (config/release error) must not restart"
    # Exit 75 (a rollout bundle was installed) must restart: Restart=on-failure restarts every non-zero exit status
    # that is neither prevented nor declared a success.
    assert re.search(r"^Restart=on-failure$", text, re.M)
    assert not re.search(rf"^(RestartPreventExitStatus|SuccessExitStatus)=.*\b{EXIT_ROLLOUT}\b", text, re.M)
    assert INSTALLED in text
    original = _analyze("verify", str(UNIT))
    complaints = [line for line in original.stderr.splitlines() if line.strip()]
    assert all(INSTALLED in line for line in complaints), complaints  # only the not-installed binary, if anything
    entry = shutil.which("edge-daemon", path=str(Path(sys.executable).parent)) or sys.executable
    copy = tmp_path / "edge-daemon.service"
    copy.write_text(text.replace(INSTALLED, entry))
    checked = _analyze("verify", str(copy))
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr
