"""The coursework edition, built on nbgrader (https://nbgrader.readthedocs.io): the chapters in
book/ stay the single source. A coded exercise is three cells in its chapter: the task (markdown),
an answer cell (nbgrader "solution", the reference between ### BEGIN SOLUTION / ### END SOLUTION)
and a test cell (nbgrader "grade" with its points: visible asserts, then the hidden ones between
### BEGIN HIDDEN TESTS / ### END HIDDEN TESTS). The book runs and renders the chapters as they
are; this script makes the two things a course needs from them (book/teachers.md):

    python tools/coursework.py student [--out _build/student]   # `make student`
    python tools/coursework.py grade DIR [--out grades.csv]      # `make grade SUBMISSIONS=DIR`
    python tools/coursework.py tasks                             # each coded task and its points

`student` writes the student release: each chapter with the reference answers replaced by a stub,
the hidden tests, all outputs and the prose answers (:::{dropdown} 练习 … 答案) removed, plus the
results/ files the chapters read. `grade` grades DIR/<student>/<chapter>.ipynb (any chapters, any
students) with `nbgrader autograde`, one student and chapter at a time in its own process: a cell
may run CELL_TIMEOUT seconds, a notebook NOTEBOOK_TIMEOUT; test cells a student edited or deleted
are put back from the source first, so a notebook that errors, loops or loses its tests scores 0
on the tasks it breaks and the grader goes on. It writes one CSV: a row per student, a column per
task (points), and the total.
"""
import argparse
import csv
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOK = os.path.join(ROOT, "book")
CELL_TIMEOUT = 300  # seconds a cell may run when grading (the slowest chapter cell takes ~1 minute)
NOTEBOOK_TIMEOUT = 1200  # seconds one student's chapter may take in all
STUB = "# 在这里写你的代码\nraise NotImplementedError()"
# a prose answer: ":::{dropdown} 练习 2 答案" up to its closing ":::"
DROPDOWN_ANSWER = re.compile(r"\n*:::\{dropdown\} 练习[^\n]*答案[^\n]*\n.*?\n:::[ \t]*(?=\n|$)", re.S)


def chapters():
    """The book's chapter notebooks, sorted: {assignment id: path}, e.g. {"ch02": ".../02_....ipynb"}."""
    return {"ch" + os.path.basename(p)[:2]: p for p in sorted(glob.glob(os.path.join(BOOK, "[0-9][0-9]_*.ipynb")))}


def tasks(path):
    """The coded tasks of one chapter, in order: [(grade_id, points)] from the test cells' metadata."""
    nb = json.load(open(path, encoding="utf-8"))
    return [(c["metadata"]["nbgrader"]["grade_id"], c["metadata"]["nbgrader"]["points"])
            for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]


def nbgrader(course, *args, timeout=None):
    """Run one nbgrader command on the course folder; returns (exit code or None on timeout, log)."""
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.Popen(cmd, cwd=course, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # its own process group: a timeout stops the kernel too
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def make_course(course, ids):
    """A throwaway nbgrader course folder whose source/ holds the given chapters, and their
    student versions generated into release/ (which also fills the gradebook)."""
    os.makedirs(course, exist_ok=True)
    with open(os.path.join(course, "nbgrader_config.py"), "w", encoding="utf-8") as f:  # for `nbgrader autograde`
        f.write(f'c = get_config()\nc.CourseDirectory.course_id = "ddpm-book"\n'
                f'c.ClearSolutions.code_stub = {{"python": {STUB!r}}}\n')
    for aid in ids:
        path = chapters()[aid]
        src = os.path.join(course, "source", aid)
        shutil.copytree(os.path.join(BOOK, "results"), os.path.join(src, "results"))
        nb = json.load(open(path, encoding="utf-8"))
        for c in nb["cells"]:
            if c["cell_type"] == "markdown":
                c["source"] = DROPDOWN_ANSWER.sub("", "".join(c["source"]))
        with open(os.path.join(src, os.path.basename(path)), "w", encoding="utf-8") as f:
            json.dump(nb, f, ensure_ascii=False, indent=1)
    generate = nbgrader_api(course).generate_assignment  # in this process: one start for all chapters
    for aid in ids:
        result = generate(aid, force=True)
        if not result["success"]:
            raise SystemExit(f"nbgrader generate_assignment {aid} failed:\n{result.get('log', '')}\n{result.get('error', '')}")


def nbgrader_api(course):
    """nbgrader's Python API on the course folder (its nbgrader_config.py is read from there)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # its alembic
    config = Config()
    config.CourseDirectory.root = course
    config.CourseDirectory.course_id = "ddpm-book"
    config.ClearSolutions.code_stub = {"python": STUB}
    return NbGraderAPI(CourseDirectory(config=config), config=config)


def student(out):
    """The student release of every chapter, flat under out/ (chapters + results/)."""
    ids = list(chapters())
    with tempfile.TemporaryDirectory() as course:
        make_course(course, ids)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        for aid in ids:
            release = os.path.join(course, "release", aid)
            for name in os.listdir(release):
                if name.endswith(".ipynb"):
                    shutil.copy(os.path.join(release, name), out)
        shutil.copytree(os.path.join(BOOK, "results"), os.path.join(out, "results"))
    n = sum(len(tasks(p)) for p in chapters().values())
    print(f"student release: {len(ids)} chapters, {n} coded tasks -> {out}")


def scores(course, aid, sid):
    """{grade_id: points} of one graded submission, from nbgrader's gradebook ({} if none)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{os.path.join(course, 'gradebook.db')}", "ddpm-book") as gb:
        try:
            submission = gb.find_submission(aid, sid)
        except MissingEntry:
            return {}
        return {g.name: g.score for nb in submission.notebooks for g in nb.grades}


def grade(submissions, out, cell_timeout=CELL_TIMEOUT, notebook_timeout=NOTEBOOK_TIMEOUT):
    """Grade DIR/<student>/<chapter>.ipynb; write the CSV table; returns {student: {task: points}}."""
    names = {os.path.basename(p): aid for aid, p in chapters().items()}
    found = sorted((s, names[os.path.basename(p)], p)
                   for s in os.listdir(submissions) if os.path.isdir(os.path.join(submissions, s))
                   for p in glob.glob(os.path.join(submissions, s, "*.ipynb")) if os.path.basename(p) in names)
    if not found:
        raise SystemExit(f"no submissions in {submissions}: expected {submissions}/<student>/<chapter>.ipynb, "
                         f"a chapter being one of {', '.join(sorted(names))}")
    ids = sorted({aid for _, aid, _ in found})
    students = sorted({s for s, _, _ in found})
    table = {s: {} for s in students}
    with tempfile.TemporaryDirectory() as course:
        make_course(course, ids)
        for sid, aid, path in found:
            dest = os.path.join(course, "submitted", sid, aid)
            os.makedirs(dest, exist_ok=True)
            shutil.copy(path, dest)
            t0 = time.perf_counter()
            code, log = nbgrader(course, "autograde", aid, f"--student={sid}", "--create", "--force",
                                 f"--Execute.timeout={cell_timeout}", "--OverwriteCells.add_missing_cells=True",
                                 timeout=notebook_timeout)
            got = scores(course, aid, sid) if code == 0 else {}  # a crash or a timeout: no points
            for task, _ in tasks(chapters()[aid]):
                table[sid][task] = float(got.get(task, 0.0))
            status = "timed out" if code is None else ("ok" if code == 0 else f"nbgrader exit {code}")
            print(f"{sid:20s} {aid}: {sum(table[sid].get(t, 0) for t, _ in tasks(chapters()[aid])):5.1f} points, "
                  f"{time.perf_counter() - t0:6.1f} s, {status}", flush=True)
            if code != 0:
                print("   " + "\n   ".join(log.strip().splitlines()[-5:]), flush=True)
    columns = [t for aid in ids for t, _ in tasks(chapters()[aid])]
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", *columns, "total"])
        w.writerow(["(max)", *[p for aid in ids for _, p in tasks(chapters()[aid])],
                    sum(p for aid in ids for _, p in tasks(chapters()[aid]))])
        for s in students:
            w.writerow([s, *[table[s].get(c, 0.0) for c in columns], sum(table[s].get(c, 0.0) for c in columns)])
    print(f"{len(students)} students, {len(found)} notebooks -> {out}")
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("student", help="write the student release")
    s.add_argument("--out", default=os.path.join(ROOT, "_build", "student"))
    g = sub.add_parser("grade", help="grade DIR/<student>/<chapter>.ipynb into a CSV table")
    g.add_argument("submissions")
    g.add_argument("--out", default="grades.csv")
    g.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT)
    g.add_argument("--notebook-timeout", type=int, default=NOTEBOOK_TIMEOUT)
    sub.add_parser("tasks", help="list each chapter's coded tasks and points")
    a = p.parse_args(argv)
    if a.command == "student":
        student(a.out)
    elif a.command == "grade":
        grade(a.submissions, a.out, a.cell_timeout, a.notebook_timeout)
    else:
        for aid, path in chapters().items():
            print(aid, os.path.basename(path), tasks(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
