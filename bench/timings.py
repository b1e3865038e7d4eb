"""`make timings`: execute every notebook in book/ (without changing it), time each, and write
book/timings.md, the page the book shows. Run on the machine whose numbers you want to publish."""
import datetime
import glob
import os
import platform
import time

import nbformat
import torch
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "book", "*.ipynb"))):
        nb = nbformat.read(path, as_version=4)
        title = next(c.source.splitlines()[0].lstrip("# ") for c in nb.cells if c.cell_type == "markdown")
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        seconds = time.perf_counter() - t0
        rows.append((os.path.basename(path), title, seconds))
        print(f"{os.path.basename(path):28s} {seconds:7.1f} s", flush=True)
    total = sum(r[2] for r in rows)
    lines = [
        "# 执行时间",
        "",
        "每个笔记本从头执行一遍所用的时间（`make timings` 生成本页；包括启动内核）。本书的发布模型都已训练好，",
        "所以笔记本里只有短暂的现场训练和采样；耗时最多的是第 6 章两次 1000 步的采样。",
        "",
        f"测量环境：{platform.machine()}，{os.cpu_count()} 核 CPU，无 GPU 加速"
        f"（`torch.cuda.is_available()` = {torch.cuda.is_available()}），PyTorch {torch.__version__}，"
        f"{datetime.date.today().isoformat()}。",
        "",
        "| 笔记本 | 章 | 时间（秒） |",
        "|---|---|---:|",
    ]
    lines += [f"| `{name}` | {title} | {sec:.0f} |" for name, title, sec in rows]
    lines += [f"| **合计** | | **{total:.0f}** |", ""]
    with open(os.path.join(ROOT, "book", "timings.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"total {total:.1f} s -> book/timings.md")


if __name__ == "__main__":
    main()
