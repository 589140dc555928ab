"""The bench report: ``report.json`` (every number, for machines) and a self-contained ``report.html`` (for people).

The HTML embeds its figures as data URIs, so the one file can be mailed or attached to a station's acceptance
record. Tables come from the same dictionary that is written to JSON: the two can never disagree.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.bad{color:#b00;font-weight:bold}
.ok{color:#070}img{max-width:100%;border:1px solid #ddd;margin:0.4em 0}code{background:#f5f5f5;padding:1px 4px}
"""


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: fixed digits, '–' for missing or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def signed(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def study_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "AUROC (Original)", "AUROC (Foreground-Only)", "Δ", "Rel.%"]
    rows = [
        [r["model"], fmt(r["full"]), fmt(r["foreground"]), signed(r["delta"]), signed(r["relative_pct"], 2)]
        for r in report.get("study", [])
    ]
    return headers, rows


def accuracy_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "frames (good/defective)", "image AUROC", "pixel AUROC", "AU-PRO@0.3", "F1-max",
               "good flagged NG", "defects passed"]  # fmt: skip
    rows = []
    for m in report["models"]:
        a = m["accuracy"]
        f1 = a.get("f1_max") or {}
        rows.append(
            [
                m["name"],
                f"{a['frames']} ({a['good']}/{a['defective']})",
                fmt(a.get("image_auroc")),
                fmt(a.get("pixel_auroc")),
                fmt(a.get("au_pro")),
                fmt(f1.get("f1")),
                f"{a['false_alarms']}/{a['good']}",
                f"{a['misses']}/{a['defective']}",
            ]
        )
    return headers, rows


def per_type_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    kinds = sorted({k for m in report["models"] for k in m["accuracy"].get("per_type_auroc", {})})
    rows = [[m["name"], *(fmt(m["accuracy"]["per_type_auroc"].get(k)) for k in kinds)] for m in report["models"]]
    return ["model", *kinds], rows


def latency_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["stage", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms", "frames/s"]
    rows = []
    read = report["latency"]["read"]
    if read:
        rows.append(["read/decode", *(fmt(read.get(k), 2) for k in ("p50", "p95", "p99", "mean", "max")), ""])
    for m in report["models"]:
        for stage in ("crop", "infer", "score", "total"):
            s = m["latency"].get(stage) or {}
            label = f"{m['name']}: {'crop+infer+score' if stage == 'total' else stage}"
            fps = fmt(s.get("fps"), 1) if stage == "total" else ""  # a stage alone sets no frame rate
            rows.append([label, *(fmt(s.get(k), 2) for k in ("p50", "p95", "p99", "mean", "max")), fps])
    return headers, rows


def inputs_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["input", "kind", "split", "frames scored", "classes", "image AUROC per model", "problem"]
    rows = []
    for i, d in enumerate(report["inputs"]):
        per_model = "; ".join(f"{m['name']} {fmt(m['per_input_auroc'][i])}" for m in report["models"]
                              if m["per_input_auroc"][i] is not None)  # fmt: skip
        classes = ", ".join(f"{k} {v}" for k, v in d["counts"].items())
        problem = (d["error"] or "") + (" (dropped from the metrics)" if d["dropped"] else "")
        rows.append([d["path"], d["kind"], d["split"], str(d["frames"]), classes, per_model or "–", problem or "–"])
    return headers, rows


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _gates(report: dict[str, Any]) -> str:
    items = []
    for name, gate in report["gates"].items():
        css = "ok" if gate["passed"] else "bad"
        items.append(f'<li class="{css}">{html.escape(name)}: {"PASS" if gate["passed"] else "FAIL"} — '
                     f"{html.escape(gate['detail'])}</li>")  # fmt: skip
    return f"<ul>{''.join(items)}</ul>" if items else "<p>No gate was asked for (--budget-ms, --parity).</p>"


def write_html(report: dict[str, Any], figures: dict[str, Path], path: Path) -> Path:
    m = report["machine"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>edge-bench report</title><style>{CSS}</style>"
        "</head><body><h1>edge-bench report</h1>",
        f"<p>{html.escape(report['started'])} · <code>{html.escape(report['command'])}</code></p>",
        f"<p>machine: {html.escape(report['machine_line'])}; load average {fmt(m.get('load_average_1min'), 2)}</p>",
        "<h2>Gates</h2>" + _gates(report),
        "<h2>Inputs</h2>" + _html_table(*inputs_table(report)),
    ]
    if report.get("study"):
        parts.append("<h2>Foreground study (image AUROC)</h2>" + _html_table(*study_table(report)))
    parts += [
        "<h2>Accuracy</h2>" + _html_table(*accuracy_table(report)),
        "<h3>Image AUROC per defect type</h3>" + _html_table(*per_type_table(report)),
        "<h2>Latency after warm-up</h2>" + _html_table(*latency_table(report)),
        f"<p>pipeline throughput (read + every model): {fmt(report['latency']['throughput_fps'], 1)} frames/s</p>",
    ]
    for name, fig in figures.items():
        parts.append(f"<h3>{html.escape(name)}</h3>{_image(fig)}")
    if report.get("scoring_written"):
        items = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in report["scoring_written"])
        parts.append(f"<h2>Scoring files written (--fit-scoring)</h2><ul>{items}</ul>")
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], figures: dict[str, Path], path: Path) -> Path:
    """The same tables as Markdown with relative figure links (for docs and merge requests)."""
    parts = [f"# edge-bench report\n\n- {report['started']}\n- command: `{report['command']}`",
             f"- machine: {report['machine_line']}\n"]  # fmt: skip
    gates = [f"- {n}: **{'PASS' if g['passed'] else 'FAIL'}** — {g['detail']}" for n, g in report["gates"].items()]
    if gates:
        parts.append("## Gates\n\n" + "\n".join(gates) + "\n")
    if report.get("study"):
        parts.append("## Foreground study (image AUROC)\n\n" + _md_table(*study_table(report)) + "\n")
    parts += [
        "## Inputs\n\n" + _md_table(*inputs_table(report)) + "\n",
        "## Accuracy\n\n" + _md_table(*accuracy_table(report)) + "\n",
        "### Image AUROC per defect type\n\n" + _md_table(*per_type_table(report)) + "\n",
        "## Latency after warm-up\n\n" + _md_table(*latency_table(report)) + "\n",
        f"Pipeline throughput (read + every model): {fmt(report['latency']['throughput_fps'], 1)} frames/s\n",
    ]
    parts += [f"### {name}\n\n![{name}]({fig.name})\n" for name, fig in figures.items()]
    parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in report["notes"]) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default), encoding="utf-8")
    tmp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def finite(value: Any) -> Any:
    """Replace non-finite floats (recursively) by None: JSON has no NaN, and a missing number must read as missing."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
