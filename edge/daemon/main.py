"""``edge-daemon``: run the inspection service in the foreground, check a config, or summarise a results database."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from edge.core.errors import EdgeError
from edge.daemon.config import ConfigError, EdgeConfig, load_config
from edge.daemon.preflight import PreflightError, preflight_bundle
from edge.daemon.release import ReleaseError
from edge.daemon.store import read_summary
from edge.daemon.supervisor import configure_logging

log = logging.getLogger("edge.daemon")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def format_summary(summary: dict[str, Any], db: Path, evidence_dir: Path | None) -> str:
    """The end-of-run summary (also ``--summary DB``): counts, latency percentiles, where things are."""
    c, v, lat = summary["counters"], summary["verdicts"], summary["latency_ms"]

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f} ms"

    lines = [
        f"run {summary['run_id']} ({summary['source']}): {summary['records']} verdicts — "
        f"{v['OK']} OK, {v['NG']} NG, {v['ERROR']} ERROR",
        f"frames: scored {c.get('scored', 0)}, gated {c.get('gated', 0)}, waiting {c.get('waiting', 0)}, "
        f"dropped {c.get('dropped', 0)} (torn {c.get('torn', 0)}); late {summary['late']}",
        f"restarts: capture {c.get('restarts_capture', 0)}, inference {c.get('restarts_inference', 0)}",
        f"latency publish→verdict: p50 {ms(lat['p50'])}, p99 {ms(lat['p99'])}",
        f"database: {db}",
    ]
    if summary["finished_ns"] is None:
        lines[1:1] = _unfinished(summary)
    elif c.get("verdicts_lost", 0):
        lines.insert(1, f"LOST: {c['verdicts_lost']} verdicts could not be written to the database (see the log)")
    if evidence_dir is not None:
        lines.append(f"evidence: {evidence_dir} (saved {c.get('evidence_saved', 0)})")
    return "\n".join(lines)


def _unfinished(summary: dict[str, Any]) -> list[str]:
    """Lines flagging a run without a finish time: what is known of the frames it never accounted."""
    c = summary["counters"]
    accounted = sum(c.get(k, 0) for k in ("scored", "gated", "waiting", "dropped", "capture_lost"))
    published = c.get("published", 0)
    return [
        "NOT FINISHED: no final count was stored (the daemon was killed or lost power, or it is still running); "
        "the counters below are from its last update (every 2 s)",
        f"at that update: {published} frames published to the ring, {accounted} accounted, "
        f"{max(published - accounted, 0)} in flight; verdict rows in the database: {summary['records']} "
        f"(counters: {c.get('scored', 0)} scored) — frames after that update are accounted nowhere",
    ]


def _print_summary(db: Path, run_id: int | None, evidence_dir: Path | None) -> int:
    try:
        print(format_summary(read_summary(db, run_id), db, evidence_dir), flush=True)
    except EdgeError as err:
        print(f"edge-daemon: {err}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-daemon", description=__doc__)
    parser.add_argument("--config", type=Path, help="edge.yaml (see deploy/edge.example.yaml)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit (2 if invalid)")
    parser.add_argument("--summary", type=Path, metavar="DB", help="print the summary of a results database")
    parser.add_argument("--run-id", type=int, help="with --summary: that run (default: the latest)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    if args.summary is not None:
        return _print_summary(args.summary, args.run_id, None)
    if args.config is None:
        parser.error("--config is required (or --summary DB)")
    try:
        config = load_config(args.config)
    except ConfigError as err:
        for line in err.lines:
            print(f"edge-daemon: config error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    return _check_and_run(config, args)


def _check_and_run(config: EdgeConfig, args: argparse.Namespace) -> int:
    """The start checks (all of them for --check-config too), then the daemon unless only checking."""
    start = not args.check_config
    try:  # the same checks for --check-config and a start: a start with a mismatch spawns no child
        config, checked, bundle = preflight_bundle(config, open_camera=start, roll_back=start)
    except PreflightError as err:
        for line in err.lines:
            print(f"edge-daemon: config error: {args.config}: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except ReleaseError as err:  # an unsigned or altered bundle never scores
        print(f"edge-daemon: release error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgeError as err:  # the live camera cannot be opened now: not the config's fault, so retried (exit 1)
        print(f"edge-daemon: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.check_config:
        r = checked.release
        signed = f", release {r.release!r} signed by {r.signed_by}" if r.signed_by else ""
        signed += f", rollout bundle {bundle.bundle!r}" if bundle.bundle else ""
        print(f"edge-daemon: {args.config} is valid ({len(config.models)} model(s), source {config.source.type}"
              f"{signed}; runtime {checked.runtime.describe()})")  # fmt: skip
        return EXIT_OK
    from edge.daemon.app import EdgeApp  # noqa: PLC0415 (--summary stays free of the pipeline's imports)

    configure_logging(level=getattr(logging, args.log_level))
    app = EdgeApp(config, checked.release, spec=checked.spec, bundle=bundle)
    try:
        code = app.run()
    except EdgeError as err:
        log.error("event=fatal error=%r", str(err))
        return EXIT_FAILED
    _print_summary(app.db_path, app.run_id, app.evidence_dir)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
