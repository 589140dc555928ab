"""Recorder → SDK playback round trips (real pyrealsense2 software device, recorder and pipeline playback)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from drivers.errors import RecordingError
from drivers.labels import LabelsError, LabelWriter, attach_labels, labels_dir_for, read_labels
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from drivers.recorder import RecordingSummary, count_recorded_frames, record_frames
from edge.core.frame import DrumPose, Extrinsics, Frame, GroundTruth, Intrinsics, StreamSpec

W, H = 160, 120
COLOR = Intrinsics(W, H, 150.5, 151.25, 79.75, 60.125, "brown_conrady", (0.01, -0.02, 0.001, 0.0005, 0.003))
DEPTH = Intrinsics(W, H, 140.0, 140.5, 81.0, 59.5, "brown_conrady", (0.0, 0.0, 0.0, 0.0, 0.0))
# A small rotation about y and a 15 mm baseline, as on a D435 (row-major R).
_C, _S = float(np.cos(0.01)), float(np.sin(0.01))
TO_COLOR = Extrinsics(rotation=(_C, 0.0, _S, 0.0, 1.0, 0.0, -_S, 0.0, _C), translation=(0.015, 0.0002, -0.0001))


def make_spec(aligned: bool, serial: str = "SYN0042") -> StreamSpec:
    return StreamSpec(
        serial=serial,
        color_intrinsics=COLOR,
        depth_intrinsics=COLOR if aligned else DEPTH,
        depth_to_color=Extrinsics() if aligned else TO_COLOR,
        depth_scale=0.0001,
        fps=30.0,
        depth_aligned_to_color=aligned,
        source="test",
    )


def make_frames(spec: StreamSpec, n: int, first_number: int = 7, seed: int = 0) -> list[Frame]:
    """Random pixels (every value matters) and timestamps with sub-microsecond parts the SDK must round."""
    rng = np.random.default_rng(seed)
    return [
        Frame(
            color=rng.integers(0, 256, spec.color_shape, dtype=np.uint8),
            depth=rng.integers(1, 65535, spec.depth_shape, dtype=np.uint16),
            spec=spec,
            color_frame_number=first_number + i,
            depth_frame_number=first_number + i,
            device_ts_ns=1_700_000_123_456_789 + i * 33_333_333,
            host_ts_ns=0,
            sequence=i,
        )
        for i in range(n)
    ]


def play(path: Path, align: bool) -> tuple[StreamSpec, list[Frame]]:
    with PlaybackSource(PlaybackSourceConfig(path=path, align_to_color=align)) as src:
        return src.spec, list(src.frames())


def test_round_trip_reproduces_pixels_and_metadata(tmp_path: Path) -> None:
    spec = make_spec(aligned=False)
    frames = make_frames(spec, 6)
    out = tmp_path / "cam.db3"
    summary = record_frames(iter(frames), out, spec)  # written in this process, then fully released
    assert summary == RecordingSummary(
        path=out,
        n_frames=6,
        first_frame_number=7,
        last_frame_number=12,
        first_device_ts_ns=frames[0].device_ts_ns,
        last_device_ts_ns=frames[-1].device_ts_ns,
        size_bytes=out.stat().st_size,
        write_s=summary.write_s,
    )
    assert out.is_file() and not list(tmp_path.glob("cam.*[!3]")), "the SDK must keep the caller's .db3 name"

    got_spec, got = play(out, align=False)  # same process: the first frameset must not be lost
    assert [f.color_frame_number for f in got] == [f.color_frame_number for f in frames]
    assert [f.depth_frame_number for f in got] == [f.depth_frame_number for f in frames]
    for want, have in zip(frames, got, strict=True):
        np.testing.assert_array_equal(have.color, want.color)
        np.testing.assert_array_equal(have.depth, want.depth)
        assert abs(have.device_ts_ns - want.device_ts_ns) <= 1_000  # the SDK stores 1 µs resolution
    assert got_spec.serial == "SYN0042"
    assert got_spec.depth_scale == pytest.approx(0.0001, rel=1e-6)  # stored as float32
    assert got_spec.fps == 30.0
    for have_intr, want_intr in ((got_spec.color_intrinsics, COLOR), (got_spec.depth_intrinsics, DEPTH)):
        assert have_intr.close_to(want_intr, tol_px=1e-4)  # float32 in the file
        np.testing.assert_allclose(have_intr.coeffs, want_intr.coeffs, atol=1e-7)
    # The file gives the 0.01 rad rotation back with ~2e-7 error (float32 storage and conversion).
    np.testing.assert_allclose(got_spec.depth_to_color.matrix(), TO_COLOR.matrix(), atol=1e-6)


def test_registered_depth_is_played_back_unchanged(tmp_path: Path) -> None:
    """Registered depth is recorded with the color calibration and identity extrinsics; playback recognises it
    and skips rs.align, which would resample it."""
    spec = make_spec(aligned=True)
    frames = make_frames(spec, 5, first_number=0, seed=1)
    out = tmp_path / "synthetic.db3"
    record_frames(frames, out, spec)
    for align in (True, False):
        got_spec, got = play(out, align=align)
        assert got_spec.depth_aligned_to_color
        assert got_spec.depth_intrinsics == got_spec.color_intrinsics and got_spec.depth_to_color.is_identity()
        assert [f.color_frame_number for f in got] == list(range(5))
        for want, have in zip(frames, got, strict=True):
            np.testing.assert_array_equal(have.color, want.color)
            np.testing.assert_array_equal(have.depth, want.depth)


def test_unregistered_recording_is_aligned_on_playback(tmp_path: Path) -> None:
    spec = make_spec(aligned=False)
    out = tmp_path / "camera.db3"
    record_frames(make_frames(spec, 2), out, spec)
    _, got = play(out, align=True)
    assert len(got) == 2 and all(f.spec.depth_aligned_to_color for f in got)
    assert got[0].spec.depth_intrinsics == got[0].spec.color_intrinsics


def test_many_frames_are_all_flushed(tmp_path: Path) -> None:
    spec = make_spec(aligned=True)
    out = tmp_path / "long.db3"
    summary = record_frames(make_frames(spec, 90), out, spec, verify=False)
    assert summary.n_frames == 90
    assert count_recorded_frames(out) == (90, 90)


def test_refuses_a_name_the_sdk_cannot_write(tmp_path: Path) -> None:
    spec = make_spec(aligned=True)
    with pytest.raises(RecordingError, match=r"writes only ROS2 \.db3.*name the output cam\.db3"):
        record_frames(make_frames(spec, 1), tmp_path / "cam.bag", spec)


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    spec = make_spec(aligned=True)
    out = tmp_path / "cam.db3"
    record_frames(make_frames(spec, 2), out, spec)
    with pytest.raises(RecordingError, match="already exists"):
        record_frames(make_frames(spec, 3), out, spec)
    assert record_frames(make_frames(spec, 3), out, spec, overwrite=True).n_frames == 3
    assert count_recorded_frames(out) == (3, 3)


def test_unwritable_place_names_path_and_remedy(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    spec = make_spec(aligned=True)
    with pytest.raises(RecordingError, match=r"cannot write the recording .*not_a_dir/cam\.db3.*writable directory"):
        record_frames(make_frames(spec, 1), blocker / "cam.db3", spec)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permission bits")
def test_read_only_directory_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    spec = make_spec(aligned=True)
    try:
        with pytest.raises(RecordingError, match=r"cannot write the recording .*ro/cam\.db3.*writable directory"):
            record_frames(make_frames(spec, 1), ro / "cam.db3", spec)
    finally:
        ro.chmod(0o755)


def test_low_disk_space_stops_with_a_clear_error(tmp_path: Path) -> None:
    """The SDK's writer thread cannot report a full disk, so free space is checked before and while writing."""
    spec = make_spec(aligned=True)
    impossible = 1 << 62
    with pytest.raises(RecordingError, match=r"MiB free on the disk of .*cam\.db3.*free disk space"):
        record_frames(make_frames(spec, 1), tmp_path / "cam.db3", spec, min_free_bytes=impossible)


def test_out_of_order_and_mismatched_frames_are_refused(tmp_path: Path) -> None:
    spec = make_spec(aligned=True)
    frames = make_frames(spec, 3)
    swapped = [frames[0], frames[2], frames[1]]
    with pytest.raises(RecordingError, match="increasing frame order"):
        record_frames(swapped, tmp_path / "a.db3", spec)
    small = replace(frames[0], depth=np.zeros((10, 10), np.uint16))
    with pytest.raises(RecordingError, match="the stream spec says"):
        record_frames([small], tmp_path / "b.db3", spec)
    with pytest.raises(RecordingError, match="no frames to record"):
        record_frames([], tmp_path / "c.db3", spec)
    assert not (tmp_path / "c.db3").exists()


def labelled(frames: list[Frame]) -> list[Frame]:
    """Give frames ground truth: a good part, a dented one, an empty station, cycling."""
    out = []
    for f in frames:
        kind = f.sequence % 3
        mask = np.zeros(f.spec.color_shape[:2], dtype=bool)
        mask[10 + f.sequence : 30, 20:50] = True
        drum = DrumPose((0.01 * f.sequence, 0.0, 1.2), (1.0, 0.0, 0.0), 0.25, 0.35)
        truth = [
            GroundTruth("good", None, drum, None, ~mask),
            GroundTruth("defect", "dent", drum, mask, ~mask),
            GroundTruth("empty", None, None),
        ][kind]
        out.append(replace(f, truth=truth))
    return out


def test_labels_sidecar_round_trip_through_a_recording(tmp_path: Path) -> None:
    spec = make_spec(aligned=True)
    frames = labelled(make_frames(spec, 6, first_number=100))
    out = tmp_path / "drums.db3"
    with LabelWriter(labels_dir_for(out)) as writer:
        record_frames(_written(frames, writer), out, spec)
    side = tmp_path / "drums.db3.labels"
    assert sorted(p.name for p in (side / "masks").iterdir()) == ["000001.png", "000004.png"]
    assert len((side / "labels.jsonl").read_text().splitlines()) == 6

    labels = read_labels(side)
    got = list(attach_labels(play(out, align=True)[1], labels))
    assert [f.color_frame_number for f in got] == list(range(100, 106))
    for want, have in zip(frames, got, strict=True):
        assert want.truth is not None and have.truth is not None
        assert (have.truth.label, have.truth.defect_type, have.truth.drum) == (
            want.truth.label,
            want.truth.defect_type,
            want.truth.drum,
        )
        for a, b in ((have.truth.defect_mask, want.truth.defect_mask), (have.truth.drum_mask, want.truth.drum_mask)):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)


def _written(frames: list[Frame], writer: LabelWriter) -> list[Frame]:
    for f in frames:
        writer.write(f)
    return frames


def test_labels_that_do_not_match_the_frames_are_refused(tmp_path: Path) -> None:
    spec = make_spec(aligned=True)
    frames = labelled(make_frames(spec, 4))
    side = tmp_path / "x.db3.labels"
    with LabelWriter(side) as writer:
        _written(frames, writer)
    labels = read_labels(side)
    with pytest.raises(LabelsError, match=r"the recording has 3 frames, the labels .* describe 4"):
        list(attach_labels(frames[:3], labels))
    renumbered = [replace(f, color_frame_number=f.color_frame_number + 50) for f in frames]
    with pytest.raises(LabelsError, match=r"has frame number 57, the labels in .* do not"):
        list(attach_labels(renumbered, labels))
    with pytest.raises(LabelsError, match="frame 1: number 9 played back, 8 labelled"):
        labels.check_frame_numbers([7, 9, 8, 10])
    with pytest.raises(LabelsError, match="already holds labels"):
        LabelWriter(side)
    with pytest.raises(LabelsError, match="no ground truth"), LabelWriter(tmp_path / "y", overwrite=True) as w:
        w.write(replace(frames[0], truth=None))


def test_malformed_or_missing_labels_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=r"no labels\.jsonl in .*nowhere"):
        read_labels(tmp_path / "nowhere")
    side = tmp_path / "bad.labels"
    side.mkdir()
    (side / "labels.jsonl").write_text('{"sequence": 0}\n')
    with pytest.raises(LabelsError, match=r"labels\.jsonl line 1 is not a frame label"):
        read_labels(side)
