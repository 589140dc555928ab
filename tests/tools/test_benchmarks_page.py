"""``python -m tools.benchmarks --only X`` rewrites only its sections of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

from tools.benchmarks.report import BenchSection, write_page


def _section(title: str, value: str) -> BenchSection:
    return BenchSection(title=title, headers=["a"], rows=[[value]], notes=[f"note {value}"])


def test_merge_replaces_only_the_sections_run_and_appends_new_ones(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    write_page(page, "python -m tools.benchmarks", [_section("One", "1"), _section("Two", "2")])
    whole = page.read_text()
    write_page(
        page, "python -m tools.benchmarks --only two", [_section("Two", "22"), _section("Three", "3")], merge=True
    )
    text = page.read_text()
    assert text.startswith(whole.split("## One")[0]), "the head (machine of the full run) is kept"
    one = whole.split("## One")[1].split("## Two")[0]
    assert "## One" + one in text, "a section not run is kept byte for byte"
    assert "| 22 |" in text and "| 2 |" not in text and text.count("## Two") == 1
    assert text.index("## One") < text.index("## Two") < text.index("## Three")
    assert "--only two" in text.split("## Two")[1], "a rerun section names its own command"
    write_page(page, "python -m tools.benchmarks", [_section("One", "1")])
    assert "## Two" not in page.read_text(), "a full run rewrites the page"
