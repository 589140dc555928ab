"""`python -m tools.defect_sizes`: the defect-area table of docs/synthetic.md."""

from __future__ import annotations

import pytest

from drivers.synthetic import STATIONS
from tools.defect_sizes import defect_areas, main


def test_table_has_a_row_per_station_and_scale(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--parts", "1", "--size", "160x120"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 * len(STATIONS)
    assert all(row.count("|") == 10 for row in rows)  # station, scale and the seven defect types


def test_fine_scale_shrinks_a_dent() -> None:
    preset = defect_areas("rail", "dent", scale=None, parts=2, seed=0, size=(320, 240))
    fine = defect_areas("rail", "dent", scale=0.35, parts=2, seed=0, size=(320, 240))
    assert all(0 < f < p for f, p in zip(fine, preset, strict=True))


def test_bad_size_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "640"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--size" in err and "640x480" in err and len(err.splitlines()) == 1
