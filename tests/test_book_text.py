"""The running times and benchmark figures the chapters quote agree with the measured ones.

`make timings` saves each notebook's and each code cell's time in
bench/results/notebook_timings.json (and shows them on book/timings.md); `make bench` saves
bench/results/bench_cpu.json. The prose quotes them by hand, so a re-measurement or an edit
can leave a stale number behind: these tests catch that, and that book/timings.md is what the
saved numbers give now.
Conventions the chapters follow: "约 N 秒" in a markdown cell is the time of the next code cell;
"本章…约 N 分钟" is the whole notebook.
"""
import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = json.load(open(os.path.join(ROOT, "bench", "results", "notebook_timings.json"), encoding="utf-8"))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "book", "*.ipynb")))
SECONDS = re.compile(r"约 ?(\d+(?:\.\d+)?) ?秒")
CHAPTER_MINUTES = re.compile(r"本章[^。]*?约 ?(\d+(?:\.\d+)?) ?分钟")
TOLERANCE = 0.35  # a quoted "about N" may be off by 35 % (this VM's speed drifts by about 10 %)


def cells(path):
    return json.load(open(path, encoding="utf-8"))["cells"]


def measured(path):
    name = os.path.basename(path)
    row = next((r for r in TIMINGS["rows"] if r["notebook"] == name), None)
    assert row is not None and "cells" in row, f"{name} has no cell times: run `make timings`"
    return row


def quoted_times(path):
    """(what, quoted seconds, measured seconds) for every time the notebook's prose quotes."""
    row, nb = measured(path), cells(path)
    cell_time = {c["cell"]: c["seconds"] for c in row["cells"]}
    out = []
    for i, c in enumerate(nb):
        if c["cell_type"] != "markdown":
            continue
        text = "".join(c["source"])
        for m in CHAPTER_MINUTES.finditer(text):
            out.append((f"cell {i}: {m.group(0)}", float(m.group(1)) * 60, row["seconds"]))
        for m in SECONDS.finditer(text):
            nxt = next(j for j in range(i + 1, len(nb)) if nb[j]["cell_type"] == "code")
            out.append((f"cell {i} -> code cell {nxt}: {m.group(0)}", float(m.group(1)), cell_time[nxt]))
    return out


def test_timings_cover_the_current_notebooks():
    # the saved cell indices must be those of the notebooks as they are now
    assert sorted(r["notebook"] for r in TIMINGS["rows"]) == [os.path.basename(p) for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        code = [i for i, c in enumerate(cells(path)) if c["cell_type"] == "code"]
        assert [c["cell"] for c in measured(path)["cells"]] == code, f"{path}: cells changed since `make timings`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_quoted_running_times_match_the_measured_ones(path):
    for what, quoted, seconds in quoted_times(path):
        assert abs(quoted - seconds) <= TOLERANCE * seconds, f"{what}: measured {seconds} s"


def test_the_chapters_quote_running_times():
    # the check above is not vacuous: the slow cells of chapters 4, 5 and 6 say how long they take
    quoted = {os.path.basename(p)[:2] for p in NOTEBOOKS if quoted_times(p)}
    assert {"04", "05", "06"} <= quoted


def test_quoted_cpu_training_throughput_matches_the_benchmark():
    bench = json.load(open(os.path.join(ROOT, "bench", "results", "bench_cpu.json"), encoding="utf-8"))
    row = next(r for r in bench["rows"] if r["what"] == "train unet2d")
    text = "".join("".join(c["source"]) for c in cells(os.path.join(ROOT, "book", "06_unet2d.ipynb")))
    m = re.search(r"朴素写法约 (\d+) 张图/秒，`ddpm_lib` 约 (\d+) 张图/秒", text)
    assert m, "chapter 6, exercise 1 no longer quotes the unet2d training throughput"
    measured = (row["values"]["plain loop"], row["values"]["ddpm_lib"])
    for quoted, bench_value in zip(map(float, m.groups()), measured):
        assert abs(quoted - bench_value) <= 0.1 * bench_value, (quoted, bench_value)


def test_the_timings_page_is_up_to_date():
    # book/timings.md is generated; an edited notebook or a new benchmark file must be followed by
    # `python tools/timings.py --page-only` (its slow-cell table labels cells by their source)
    import importlib.util
    spec = importlib.util.spec_from_file_location("timings", os.path.join(ROOT, "tools", "timings.py"))
    timings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timings)
    page = open(os.path.join(ROOT, "book", "timings.md"), encoding="utf-8").read()
    assert page == timings.render_page(TIMINGS), "book/timings.md is stale: run `python tools/timings.py --page-only`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_code_lines_fit_the_page(path):
    # the HTML page shows ~88 columns of code before it cuts a line off; a CJK character is two
    from wcwidth import wcswidth
    for i, c in enumerate(cells(path)):
        if c["cell_type"] == "code":
            for line in "".join(c["source"]).splitlines():
                assert wcswidth(line) <= 88, f"cell {i}: {line}"


def test_the_teachers_page_is_up_to_date():
    # book/teachers.md's task tables are generated from the notebooks' nbgrader metadata and the
    # saved timings: after adding a coded exercise or re-timing, run `python tools/coursework.py page`
    import importlib.util
    spec = importlib.util.spec_from_file_location("coursework", os.path.join(ROOT, "tools", "coursework.py"))
    coursework = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coursework)
    page = open(coursework.PAGE, encoding="utf-8").read()
    assert page == coursework.render_page(), "book/teachers.md is stale: run `python tools/coursework.py page`"
    assert "| 02 | `ch02-ex1` | 2 |" in page  # the table lists the tasks


def avoided_wordings():
    """{avoided: preferred} from the glossary's 用词统一 table."""
    page = open(os.path.join(ROOT, "book", "glossary.md"), encoding="utf-8").read()
    table = page.split("## 用词统一", 1)[1]
    out = {}
    for line in table.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 2 and cols[0] not in ("本书写作", "---"):
            out.update({a.strip(): cols[0] for a in cols[1].split("、")})
    return out


def prose(text):
    """Markdown without code blocks, code spans, maths and link targets."""
    for pattern in (r"```.*?```", r"`[^`]*`", r"\$\$.*?\$\$", r"\$[^$]*\$", r"\]\([^)]*\)"):
        text = re.sub(pattern, " ", text, flags=re.S)
    return text


def wording_hits(text, avoided):
    # an English unit counts only as a unit: right after a number or a formula
    if re.fullmatch(r"[A-Za-z ]+", avoided):
        return re.findall(r"(?:\d|\$)\s*" + re.escape(avoided) + r"\b", text)
    return re.findall(re.escape(avoided), text)


PAGES = NOTEBOOKS + sorted(p for p in glob.glob(os.path.join(ROOT, "book", "*.md"))
                           if not p.endswith("glossary.md"))


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_chapters_use_the_glossarys_wording(path):
    if path.endswith(".ipynb"):
        texts = ["".join(c["source"]) for c in cells(path) if c["cell_type"] == "markdown"]
    else:
        texts = [open(path, encoding="utf-8").read()]
    avoided = avoided_wordings()
    for text in texts:
        # English units keep the maths they follow ("$\\log_2 10$ bits"); code never counts
        no_code = re.sub(r"```.*?```|`[^`]*`", " ", text, flags=re.S)
        for form, preferred in avoided.items():
            hits = wording_hits(no_code if form.isascii() else prose(text), form)
            assert not hits, f"{os.path.basename(path)}: '{form}' (the glossary writes '{preferred}')"


def test_the_wording_check_can_fail():
    avoided = avoided_wordings()
    assert {"被读成", "bit", "有把握的比例"} <= set(avoided)
    assert wording_hits("类别熵约 3.28 bit，", "bit")
    assert wording_hits("上限 $\\log_2 10$ bits", "bits")
    assert not wording_hits(prose("`entropy_bits` 与 “H bits” 列"), "bits")
    assert wording_hits(prose("样本被读成 7"), "被读成")
