"""Benchmark: grading a class. N copies of one chapter's reference notebook (the answers in place,
so every cell runs) graded by `tools/coursework.py grade`, i.e. `nbgrader autograde` one student at
a time; the wall time in all and per copy, next to the chapter's own execution time. Writes JSON,
which book/teachers.md shows (`python tools/coursework.py page`).

    python bench/grading.py [--copies 30] [--chapter 02_forward_process.ipynb]
                            [--json bench/results/grading_cpu.json]
"""
import argparse
import csv
import datetime
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("coursework", os.path.join(ROOT, "tools", "coursework.py"))
coursework = importlib.util.module_from_spec(spec)
spec.loader.exec_module(coursework)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=30)
    p.add_argument("--chapter", default="02_forward_process.ipynb")
    p.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "grading_cpu.json"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        subs = os.path.join(tmp, "submissions")
        for i in range(a.copies):
            os.makedirs(os.path.join(subs, f"s{i + 1:02d}"))
            shutil.copy(os.path.join(ROOT, "book", a.chapter), os.path.join(subs, f"s{i + 1:02d}"))
        t0 = time.perf_counter()
        coursework.grade(subs, os.path.join(tmp, "grades.csv"))
        seconds = time.perf_counter() - t0
        rows = list(csv.DictReader(open(os.path.join(tmp, "grades.csv"), encoding="utf-8")))
    full = float(rows[0]["total"])  # the "(max)" row
    students = rows[1:]
    assert len(students) == a.copies and all(float(r["total"]) == full for r in students), \
        "a reference copy did not score full marks"
    out = {"chapter": a.chapter, "copies": a.copies, "seconds": round(seconds, 1),
           "seconds_per_copy": round(seconds / a.copies, 1), "points_each": float(full),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "date": datetime.date.today().isoformat()}
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
