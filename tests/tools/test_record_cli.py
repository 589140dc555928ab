"""`edge-record` as a real subprocess: synthetic recording + labels + MVTec export, export from the recording,
and the one-line errors (exit 2) for bad settings, unwritable output and a missing camera."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import pytest
from _tool import run_tool

from drivers.labels import read_labels
from drivers.realsense import connected_serials
from drivers.recorder import count_recorded_frames
from tools.record import main

SMALL = ["--width", "160", "--height", "120"]


def edge_record(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_tool("record", *args, timeout=120)


def image_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in {".png", ".tiff"})


def test_synthetic_recording_then_export_from_it(tmp_path: Path) -> None:
    out = tmp_path / "drums.db3"
    direct = tmp_path / "direct"
    run = edge_record(
        "--source", "synthetic", "--seed", "3", "--frames", "14", "--defect-rate", "0.5", *SMALL,
        "--frames-per-part", "2", "--gap-frames", "1",
        "--out", out, "--mvtec", direct,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "14 frames → " in run.stdout
    assert count_recorded_frames(out, expect=14) == (14, 14)
    labels = read_labels(tmp_path / "drums.db3.labels")
    assert len(labels) == 14 and labels.meta["frames_per_part"] == 2 and labels.meta["seed"] == 3

    replayed = tmp_path / "replayed"
    run = edge_record("--from-recording", out, "--mvtec", replayed)
    assert run.returncode == 0, run.stderr
    # Registered depth plays back without resampling, labels and frames_per_part come from the sidecar: the same
    # dataset (5 parts of 2 frames; one sample per part).
    names = image_files(direct / "drum")
    assert names == image_files(replayed / "drum") and any(n.startswith("test/") for n in names)
    match, mismatch, errors = filecmp.cmpfiles(direct / "drum", replayed / "drum", names, shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) == len(names) == 5 * 2 + sum("/gt/" in n for n in names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "synthetic", "--frames", "0", "--out", "{tmp}/a.db3"], "invalid synthetic settings (n_frames"),
        (["--source", "synthetic", "--frames", "2", "--out", "{tmp}/a.bag"], "writes only ROS2 .db3"),
        (["--source", "synthetic", "--frames", "2", "--out", "{tmp}/file/a.db3"], "cannot write the recording"),
        (["--source", "synthetic", "--frames", "2"], "nothing to write"),
        (["--from-recording", "{tmp}/none.db3", "--mvtec", "{tmp}/m"], "no labels.jsonl in"),
    ],
)
def test_errors_exit_2_with_one_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    assert main([a.format(tmp=tmp_path) for a in args] + SMALL) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edge-record: error: ")
    assert message in err and " — " in err  # problem — remedy


def test_unwritable_output_as_a_process(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    run = edge_record("--source", "synthetic", "--frames", "2", *SMALL, "--out", tmp_path / "file" / "a.db3")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"edge-record: error: cannot write the recording {tmp_path}/file/a.db3: {tmp_path}/file is a file, not a "
        "directory — choose a writable "
        "directory for the output or fix its permissions"
    ]


def test_bad_argument_is_an_argparse_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--source", "webcam", "--out", str(tmp_path / "a.db3")])
    assert exit_.value.code == 2 and "invalid choice: 'webcam'" in capsys.readouterr().err


@pytest.mark.skipif(bool(connected_serials()), reason="a RealSense camera is connected")
def test_live_camera_missing_lists_connected_serials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--source", "realsense", "--serial", "123456", "--seconds", "1", "--out", str(tmp_path / "c.db3")]) == 2
    )
    assert "no RealSense camera 123456 found (connected: none)" in capsys.readouterr().err
    assert not (tmp_path / "c.db3").exists()
