"""The labels sidecar is bound to its recording: foreign, unbound or re-timed labels are refused by the tools.

Two synthetic recordings of different seeds have the same frame numbers and device timestamps (the issue's case: 32
of 96 frames got the wrong truth), so only the binding (``recording.json``: the recording's sha256) tells them apart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from calibration.roi import save_roi
from drivers.labels import (
    BINDING_FILE,
    LABELS_FILE,
    LabelsError,
    labels_dir_for,
    labels_for_recording,
    read_labels,
)
from edge.core.scoring import file_sha256
from engines._registry import register_family
from tests.engines._toy import TOY_FAMILY, roi_around, synthetic_frames
from tools import record, train
from tools.bench import cli as bench


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(a.db3, b.db3: same length, other seed, roi.yaml) written by edge-record."""
    d = tmp_path_factory.mktemp("bound")
    common = ["--source", "synthetic", "--frames", "8", "--width", "160", "--height", "120", "--defect-rate", "0.5"]
    for name, seed in (("a.db3", "1"), ("b.db3", "2")):
        assert record.main([*common, "--seed", seed, "--out", str(d / name)]) == 0
    roi = d / "roi.yaml"
    save_roi(roi_around(synthetic_frames(1)[0]), roi)
    return d / "a.db3", d / "b.db3", roi


def _with_labels_of(source: Path, recording: Path, tmp_path: Path) -> Path:
    """A copy of ``recording`` carrying the labels sidecar of ``source``."""
    out = tmp_path / f"{recording.stem}-with-{source.stem}-labels.db3"
    shutil.copy(recording, out)
    shutil.copytree(labels_dir_for(source), labels_dir_for(out))
    return out


def test_edge_record_binds_the_sidecar_to_the_recording_it_wrote(recordings: tuple[Path, Path, Path]) -> None:
    a, b, _ = recordings
    binding = json.loads((labels_dir_for(a) / BINDING_FILE).read_text())
    assert binding["sha256"] == file_sha256(a) and binding["size_bytes"] == a.stat().st_size
    assert binding["frames"] == 8 and binding["recording"] == "a.db3"
    labels = labels_for_recording(a)
    assert len(labels) == 8 and labels.binding is not None
    # what makes the binding necessary: the other seed has the same frame numbers and device timestamps
    other = read_labels(labels_dir_for(b))
    assert [(x.color_frame_number, x.device_ts_ns) for x in labels.by_frame_number.values()] == [
        (x.color_frame_number, x.device_ts_ns) for x in other.by_frame_number.values()
    ]
    assert [x.label for x in labels.by_frame_number.values()] != [x.label for x in other.by_frame_number.values()]


def test_foreign_unbound_or_retimed_labels_are_refused(recordings: tuple[Path, Path, Path], tmp_path: Path) -> None:
    a, b, _ = recordings
    foreign = _with_labels_of(a, b, tmp_path)
    with pytest.raises(LabelsError, match=r"belong to recording a\.db3 \(sha256 [0-9a-f]{12}…\), not to .*sha256"):
        labels_for_recording(foreign)
    copy = _with_labels_of(a, a, tmp_path)  # a byte-identical copy under another name keeps its labels
    assert len(labels_for_recording(copy)) == 8
    (labels_dir_for(copy) / BINDING_FILE).unlink()
    with pytest.raises(
        LabelsError, match=r"not bound to a recording .*record .* again with edge-record \(meta.json: seed 1\)"
    ):
        labels_for_recording(copy)
    labels = labels_for_recording(a)
    first = next(iter(labels.by_frame_number.values()))
    assert labels.truth(first.color_frame_number, first.device_ts_ns).label == first.label
    with pytest.raises(LabelsError, match=r"taken at device time 5000 ns, the labels .* for a frame taken at 0 ns"):
        labels.truth(first.color_frame_number, first.device_ts_ns + 5000)


def test_edge_bench_refuses_foreign_labels(
    recordings: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, roi = recordings
    register_family(TOY_FAMILY, replace=True)
    foreign = _with_labels_of(a, b, tmp_path)
    out = tmp_path / "report"
    argv = ["--data", str(foreign), "--roi", str(roi), "--models", "toy", "--preset", "tiny", "--epochs", "1"]
    code = bench.main([*argv, "--report", str(out)])
    printed = capsys.readouterr()
    assert code == 2, printed
    refusal = [line for line in (printed.out + printed.err).splitlines() if "belong to recording a.db3" in line]
    assert len(refusal) == 1 and str(foreign) in refusal[0] and "use the labels written together" in refusal[0]
    assert not (out / "models").exists()  # refused before any model was trained on the wrong truth


def test_edge_train_refuses_foreign_labels_in_one_line(
    recordings: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, roi = recordings
    register_family(TOY_FAMILY, replace=True)
    foreign = _with_labels_of(a, b, tmp_path)
    argv = ["--model", "toy", "--preset", "tiny", "--data", str(foreign), "--roi", str(roi), "--epochs", "1"]
    assert train.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "belong to recording a.db3" in err
    assert not (tmp_path / "run" / "model.onnx").exists()
    # the --labels flag is checked the same way
    lines = (labels_dir_for(a) / LABELS_FILE).read_text()
    assert lines
    assert train.main([*argv[:-4], "--labels", str(labels_dir_for(a)), "--roi", str(roi), "--epochs", "1",
                       "--out", str(tmp_path / "run2")]) == 2  # fmt: skip
    assert "belong to recording a.db3" in capsys.readouterr().err
