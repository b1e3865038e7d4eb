"""The coursework edition (tools/coursework.py, on nbgrader): the student release holds no answers,
hidden tests or outputs and runs up to its first task; the grader gives the reference answers full
marks, the untouched release 0, and a broken submission exactly the points it earned, without
crashing. Chapter 2 is the chapter graded here (its notebook runs in ~20 s)."""
import csv
import importlib.util
import json
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("coursework", os.path.join(ROOT, "tools", "coursework.py"))
coursework = importlib.util.module_from_spec(spec)
spec.loader.exec_module(coursework)
CHAPTER = "02_forward_process.ipynb"
pytestmark = pytest.mark.slow


def load(path):
    return json.load(open(path, encoding="utf-8"))


def source(cell):
    return "".join(cell["source"])


def marked_lines(nb, begin, end):
    """The lines strictly between the begin and end markers in the notebook's code cells."""
    return [line for block in marked_blocks(nb, begin, end) for line in block.splitlines()]


def marked_blocks(nb, begin, end):
    """Each region between the markers, as its stripped non-blank lines joined by newlines."""
    out = []
    for c in nb["cells"]:
        block = None
        for line in source(c).splitlines():
            if end in line and block is not None:
                out.append("\n".join(block))
                block = None
            elif block is not None and line.strip():
                block.append(line.strip())
            if begin in line:
                block = []
    return out


def cell(nb, grade_id):
    return next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)


def set_answer(nb, task, body):
    """Replace the reference answer of a task (between the solution markers) by ``body``."""
    c = cell(nb, task + "-answer")
    c["source"] = re.sub(r"### BEGIN SOLUTION\n.*?### END SOLUTION\n?", body.rstrip("\n") + "\n",
                         source(c), flags=re.S)
    assert "BEGIN SOLUTION" not in c["source"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    coursework.student(str(out))
    return out / "book"  # the chapters; out/bench/results beside them, as in the repository


def test_the_release_holds_no_answers_hidden_tests_prose_answers_or_outputs(release):
    n_tasks = n_answer_cells = 0
    for path in coursework.chapters().values():
        src, stu = load(path), load(release / os.path.basename(path))
        text = "\n".join(source(c) for c in stu["cells"])
        lines = "\n".join(line.strip() for line in text.splitlines() if line.strip())
        blocks = (marked_blocks(src, "BEGIN SOLUTION", "END SOLUTION")
                  + marked_blocks(src, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"))
        # what the source shows outside its answers and hidden tests (a hidden test may repeat a
        # visible line, a short line like "return mu" may occur in the chapter's own code)
        public = "\n".join(line.strip() for c in src["cells"] for line in
                            re.sub(r"### BEGIN (SOLUTION|HIDDEN TESTS).*?### END (SOLUTION|HIDDEN TESTS)", "",
                                   source(c), flags=re.S).splitlines())
        for block in blocks:  # no answer or hidden test survives, whole or line by line
            assert block not in lines, (os.path.basename(path), block)
            for line in block.splitlines():
                assert line in public or line not in lines, (os.path.basename(path), line)
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
        assert ":::{dropdown} 练习" not in text  # the prose answers too
        answers = [source(c) for c in src["cells"] if "answer" in c["metadata"].get("tags", [])]
        n_answer_cells += len(answers)
        assert not any(a in text for a in answers)  # and the cells that print their numbers
        assert not any(c.get("outputs") for c in stu["cells"])
        # the visible tests stay, with their points
        assert coursework.tasks(path) == [(c["metadata"]["nbgrader"]["grade_id"], c["metadata"]["nbgrader"]["points"])
                                          for c in stu["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
        n_tasks += len(coursework.tasks(path))
    src = load(os.path.join(ROOT, "book", CHAPTER))
    assert n_tasks >= 3 and len(marked_lines(src, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")) >= 3
    assert ":::{dropdown} 练习" in "\n".join(source(c) for c in src["cells"])  # the check above is not vacuous
    assert n_answer_cells >= 1
    assert (release / "results" / "ch1_reverse_chain.json").is_file()  # what chapter 1 reads
    assert (release.parent / "bench" / "results" / "bench_cpu.json").is_file()  # and chapter 7


WITH_TASKS = [os.path.basename(p) for p in coursework.chapters().values() if coursework.tasks(p)]


@pytest.mark.parametrize("name", WITH_TASKS)
def test_the_student_notebook_runs_until_its_first_task(release, name):
    nb = nbformat.read(str(release / name), as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("solution"))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(release)}})
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert err.value.ename == "NotImplementedError"
    # every cell before the first task ran; the stub raised in its answer cell or in its test cell
    tests_at = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert max(ran) in (first, tests_at) and tests_at > first
    assert all(c.get("execution_count") for c in nb.cells[:first] if c.cell_type == "code")


def test_every_chapter_has_at_least_three_coded_tasks():
    for path in coursework.chapters().values():
        assert len(coursework.tasks(path)) >= 3, os.path.basename(path)
    assert WITH_TASKS == [os.path.basename(p) for p in coursework.chapters().values()]


def test_a_hard_coded_answer_passes_the_visible_test(release):
    # the visible test of exercise 3 alone cannot tell a hard-coded 368 from a real answer ...
    import ddpm_lib as dl
    visible = source(cell(load(release / CHAPTER), "ch02-ex3"))
    exec(visible, {"first_t_below": lambda schedule, level=0.5: 368, "schedule": dl.NoiseSchedule.linear()})
    # ... the hidden tests can (test_grading: "hard_coded" loses exactly that task's point)


@pytest.fixture(scope="module")
def graded(release, tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    ref, blank = load(os.path.join(ROOT, "book", CHAPTER)), load(release / CHAPTER)

    def submit(student, nb=None, text=None):
        os.makedirs(subs / student)
        with open(subs / student / CHAPTER, "w", encoding="utf-8") as f:
            f.write(text if text is not None else json.dumps(nb, ensure_ascii=False))

    submit("reference", ref)
    submit("untouched", blank)
    one_wrong = json.loads(json.dumps(ref))  # exercise 2 forgets a square root
    set_answer(one_wrong, "ch02-ex2", '''    abar = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar) * noise''')
    submit("one_wrong", one_wrong)
    hard = json.loads(json.dumps(ref))
    set_answer(hard, "ch02-ex3", "    return 368")
    submit("hard_coded", hard)
    vandal = json.loads(json.dumps(blank))  # deletes exercise 1's tests, loops in 2, answers 3
    set_answer(ref_copy := json.loads(json.dumps(ref)), "ch02-ex1", "    return 1.0")
    vandal["cells"] = [c for c in vandal["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") != "ch02-ex1"]
    cell(vandal, "ch02-ex1-answer")["source"] = source(cell(ref_copy, "ch02-ex1-answer"))
    cell(vandal, "ch02-ex2-answer")["source"] = "def my_q_sample(x0, t, alphas_cumprod, noise):\n    while True:\n        pass\n\n\nmy_q_sample(None, None, None, None)\n"
    cell(vandal, "ch02-ex3-answer")["source"] = source(cell(ref, "ch02-ex3-answer"))
    submit("vandal", vandal)
    editor = json.loads(json.dumps(ref))  # a wrong answer 3 whose test cell was emptied
    set_answer(editor, "ch02-ex3", "    return 0")
    cell(editor, "ch02-ex3")["source"] = "pass\n"
    submit("editor", editor)
    submit("corrupt", text='{"cells": [')
    out = tmp_path_factory.mktemp("grades") / "grades.csv"
    coursework.grade(str(subs), str(out), cell_timeout=30)
    return {row["student"]: row for row in csv.DictReader(open(out, encoding="utf-8"))}


def points(row):
    return [float(row[k]) for k in ("ch02-ex1", "ch02-ex2", "ch02-ex3", "total")]


def test_the_reference_answers_score_full_marks(graded):
    assert points(graded["(max)"]) == [2, 2, 1, 5]
    assert points(graded["reference"]) == [2, 2, 1, 5]


def test_the_untouched_release_scores_zero(graded):
    assert points(graded["untouched"]) == [0, 0, 0, 0]


def test_one_wrong_answer_loses_exactly_its_points(graded):
    assert points(graded["one_wrong"]) == [2, 0, 1, 3]


def test_a_hard_coded_answer_fails_a_hidden_test(graded):
    assert points(graded["hard_coded"]) == [2, 2, 0, 4]


def test_deleted_or_emptied_tests_are_put_back_and_a_loop_is_stopped(graded):
    # vandal: exercise 1's tests deleted (a wrong answer), 2 loops (stopped after 30 s), 3 right
    assert points(graded["vandal"]) == [0, 0, 1, 1]
    # editor: a wrong answer 3 whose test cell was emptied still loses that point
    assert points(graded["editor"]) == [2, 2, 0, 4]


def test_an_unreadable_notebook_scores_zero_and_the_grader_goes_on(graded):
    assert points(graded["corrupt"]) == [0, 0, 0, 0]
    assert len(graded) == 8  # (max) and all seven students
