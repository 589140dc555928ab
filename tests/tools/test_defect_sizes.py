"""`python -m tools.defect_sizes`: the defect-area table of docs/synthetic.md."""

from __future__ import annotations

import pytest

from drivers.synthetic import STATIONS
from tools.defect_sizes import defect_areas, defect_signal, main


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


def test_signal_is_the_defects_own_change_of_the_frame(capsys: pytest.CaptureFixture[str]) -> None:
    px, colour, depth = defect_signal("rail", "foreign_object", parts=range(2), seed=0, size=(320, 240))
    assert px > 0 and colour > 0 and depth > 0  # an object on the drum: colour and depth both change
    _, colour, depth = defect_signal("rail", "discoloration", parts=range(2), seed=0, size=(320, 240))
    assert colour > 0 and depth == 0  # paint only: the geometry is the good part's, noise included
    assert main(["--signal", "--parts", "1", "--size", "160x120"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(STATIONS) * 7  # the header, then every station and type


def test_no_parts_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--signal", "--parts", "0"]) == 2
    assert "--parts 0" in capsys.readouterr().err
