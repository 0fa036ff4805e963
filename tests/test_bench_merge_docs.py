"""The "## Merge" section of docs/benchmarks.md is what benchmarks/bench_merge.py writes:
reading its figures back and rendering them gives the same text (so a rerun loses nothing
written by hand), and re-measuring one merge replaces only that row."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_merge
    finally:
        sys.path.pop(0)
    return bench_merge


def _section(text):
    start = text.index("\n## Merge\n") + 1
    end = text.find("\n## ", start)
    return text[start:end if end >= 0 else len(text)]


def test_docs_section_is_the_rendering_of_its_figures(bench):
    sec = bench.read_section(DOCS)
    assert sorted(sec["main"]) == sorted(m[0] for m in bench.MERGES)  # one row per merge
    with open(DOCS, encoding="utf-8") as f:
        assert bench.render_section(sec) == _section(f.read())


def test_remeasuring_one_merge_keeps_the_other_rows(bench, tmp_path):
    docs = tmp_path / "benchmarks.md"
    with open(DOCS, encoding="utf-8") as f:
        docs.write_text(f.read())
    sec = bench.read_section(str(docs))
    gib = 2 ** 30
    row = ("ram", 2, 1.04e9, (9.0, 0.2 * gib, 6 * gib), (10.0, 8.0), (90.0, 3 * gib, 4 * gib),
           "full", "2027-01-01, load 1-2")
    sec["main"]["ram"] = bench.main_cells(row, "full")
    bench.write_section(bench.render_section(sec), str(docs))
    again = bench.read_section(str(docs))
    assert again["main"]["ram"][1:6] == ["2027-01-01, load 1-2", "1.04B", "9.0", "10.0", "0.90x"]
    assert again["main"]["ram"][11] == "**10.0x**"
    for name, cells in sec["main"].items():
        assert again["main"][name] == cells
    assert again["second"] == sec["second"] and again["pauses"] == sec["pauses"]
    assert "`ram` is at the floor (0.90x)" in docs.read_text()
