"""`make timings`: execute every notebook in book/ (without changing it), time each, save the
numbers (each notebook, and each code cell from nbclient's execution timestamps) in
bench/results/notebook_timings.json and write book/timings.md, the page the book shows, together
with the latest benchmark tables from bench/results/bench_*.json. tests/test_book_text.py checks
the running times the chapters quote against the saved cell times.

    python tools/timings.py              # execute and time, then write the page
    python tools/timings.py --page-only  # rewrite the page from the saved numbers
    python tools/timings.py --inplace    # also save the executed notebooks (`make execute`)
    python tools/timings.py --inplace --only=07_fast_sampling.ipynb  # one notebook, keep the rest
"""
import datetime
import glob
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED = os.path.join(ROOT, "bench", "results", "notebook_timings.json")
SLOW_CELL_S = 5.0  # the page lists the code cells that take at least this long


def cell_seconds(cell):
    """Wall time of one executed code cell, from the timestamps nbclient records."""
    ex = cell.metadata.get("execution", {})
    start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return round((parse(end) - parse(start)).total_seconds(), 1)


def cell_label(source):
    """What a reader recognises a code cell by: its first line that does real work."""
    lines = [ln.strip() for ln in source.splitlines() if ln.strip()]
    if lines and lines[0].startswith("# 本章用到的全部设置"):
        return "本章的设置与导入"
    work = [ln for ln in lines if not ln.startswith(("#", "torch.manual_seed(", "import ", "from "))]
    line = (work or lines or [""])[0].split("  # ")[0]  # without an inline comment
    return "`" + (line if len(line) <= 60 else line[:57] + "...") + "`"


def measure(inplace=False, only=None):
    """Execute and time the notebooks (``only``: just these file names, the other rows are
    kept from the saved file)."""
    import nbformat
    import torch
    from nbclient import NotebookClient

    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "book", "*.ipynb"))):
        if only and os.path.basename(path) not in only:
            old = json.load(open(SAVED, encoding="utf-8"))["rows"]
            rows += [r for r in old if r["notebook"] == os.path.basename(path)]
            continue
        nb = nbformat.read(path, as_version=4)
        title = next(c.source.splitlines()[0].lstrip("# ") for c in nb.cells if c.cell_type == "markdown")
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=1200, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        seconds = round(time.perf_counter() - t0, 1)
        if inplace:  # the executed notebook replaces the committed one (as `make execute` does)
            nbformat.write(nb, path)
        # cell: the index in nb.cells (markdown cells included), as tests/test_book_text.py reads it
        cells = [{"cell": i, "seconds": cell_seconds(c)} for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        rows.append({"notebook": os.path.basename(path), "title": title, "seconds": seconds, "cells": cells})
        print(f"{rows[-1]['notebook']:28s} {rows[-1]['seconds']:7.1f} s", flush=True)
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "cuda": torch.cuda.is_available(),
            "torch": torch.__version__, "date": datetime.date.today().isoformat(), "rows": rows}
    os.makedirs(os.path.dirname(SAVED), exist_ok=True)
    with open(SAVED, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
    return info


def bench_table(b):
    """The benchmark rows as a table: the anchor, the plain ddpm_lib path, each lever."""
    lines = [f"测量设备：{b['device']}，PyTorch {b['torch']}，每项 {b['repeats']} 次交替重复取中位数"
             "（每轮换一个先后顺序）" + ("（`--quick`）" if b["quick"] else "") + "。", "",
             "| 基准 | 写法 | 数值 | 相对参照 | 相对 ddpm_lib | 内存增量峰值 MiB |", "|---|---|---:|---:|---:|---:|"]
    for r in b["rows"]:
        anchor, plain = list(r["values"])[:2]
        unit = "张图/秒" if r["unit"] == "images/s" else "秒"
        for k, v in r["values"].items():
            vs_anchor = "参照" if k == anchor else f"{speedup(r, k, anchor):.2f}×"
            vs_plain = f"{speedup(r, k, plain):.2f}×" if k not in (anchor, plain) else ""
            what = f"{r['what']}（{unit}）" if k == anchor else ""
            lines.append(f"| {what} | {k} | {v} | {vs_anchor} | {vs_plain} | {r['peak_extra_mib'][k]} |")
    return lines + [""]


def speedup(r, a, b):
    """How many times faster variant a is than b (images/s up, seconds down); as bench.speedup."""
    va, vb = r["values"][a], r["values"][b]
    return va / vb if r["unit"] == "images/s" else vb / va


def compile_paragraph(results):
    """torch.compile: what the first call costs (compile_cpu.json) against what each sampling step
    saves (the CPU table's torch.compile row), and so after how many steps it pays."""
    text = ("- **`torch.compile`**（`torch.compile(model)`、`--compile`）：训练和采样都接受编译后的模型；"
            "在 CUDA 上 `mode=\"reduce-overhead\"` 用 CUDA graph 省掉每步的启动开销。")
    path, bench = os.path.join(results, "compile_cpu.json"), os.path.join(results, "bench_cpu.json")
    if not (os.path.isfile(path) and os.path.isfile(bench)):
        return text
    c, b = json.load(open(path, encoding="utf-8")), json.load(open(bench, encoding="utf-8"))
    parts = []
    for name, m in c["models"].items():
        r = next((r for r in b["rows"] if r["what"].startswith(f"sample {name} ")), None)
        if r is None or "torch.compile" not in r["values"]:
            continue
        saved = (r["values"]["ddpm_lib"] - r["values"]["torch.compile"]) / 1000  # seconds a step
        pays = f"约 {m['first_call_s'] / saved:.0f} 步后收回" if saved > 0 else "收不回来"
        parts.append(f"`{name}` 第一次调用（编译）用 {m['first_call_s']} 秒，之后 64 张图的 1000 步采样"
                     f"从 {r['values']['ddpm_lib']} 秒变为 {r['values']['torch.compile']} 秒，编译的时间{pays}")
    if parts:
        text += (f"在本页的 CPU 上（`bench/compile_cpu.py`，{c['device']}）：" + "；".join(parts)
                 + "。步数比这少的采样不值得编译。基准表没有计时 CPU 上编译的训练步骤。")
    return text


def render_page(info):
    """The text of book/timings.md from the saved numbers, the notebooks and the benchmark files."""
    rows = info["rows"]
    total = sum(r["seconds"] for r in rows)
    lines = [
        "# 执行时间与性能",
        "",
        "## 每个笔记本的执行时间",
        "",
        "每个笔记本从头执行一遍所用的时间（`make timings` 生成本页；包括启动内核）。本书的发布模型都已训练好，"
        "笔记本里只有短暂的训练和采样。",
        "",
        f"测量环境：{info['machine']}，GPU：{'有' if info['cuda'] else '无'}，PyTorch {info['torch']}，{info['date']}。",
        "",
        "| 笔记本 | 章 | 时间（秒） |",
        "|---|---|---:|",
    ]
    lines += [f"| `{r['notebook']}` | {r['title']} | {r['seconds']:.0f} |" for r in rows]
    lines += [f"| **合计** | | **{total:.0f}** |", ""]
    slow = [(r, c) for r in rows for c in r.get("cells", []) if (c["seconds"] or 0) >= SLOW_CELL_S]
    if slow:
        lines += ["### 耗时较长的单元格", "",
                  f"同一次执行中用时 {SLOW_CELL_S:.0f} 秒以上的代码单元格（各章正文里提到的“约 N 秒”指的就是这里的时间，"
                  "`tests/test_book_text.py` 检查二者相符）：", "",
                  "| 笔记本 | 单元格 | 时间（秒） |", "|---|---|---:|"]
        sources = {r["notebook"]: json.load(open(os.path.join(ROOT, "book", r["notebook"]), encoding="utf-8"))["cells"]
                   for r, _ in slow}
        lines += [f"| `{r['notebook']}` | {cell_label(''.join(sources[r['notebook']][c['cell']]['source']))} | {c['seconds']:.0f} |"
                  for r, c in slow]
        lines += [""]
    lines += ["## 性能基准", "",
              "`make bench`（`bench/bench.py`）在同一个进程中交替运行三种写法：读者照底稿会写的朴素代码（参照），"
              "不加任何选项的 `ddpm_lib`，以及 `ddpm_lib` 加上一个提速选项。训练的参照是 `DDPMScheduler.add_noise` + AdamW + "
              "fp32 + 每批 128 张的循环（张图/秒，越大越好）；采样的参照是 `diffusers` 的 `DDPMPipeline`（同一权重，"
              "`clip_sample=False`，64 张图、1000 步的秒数，越小越好；CPU 上每种写法各计时一次 2 步、一次 2 + k 步的运行"
              "（k 见 JSON 的 `timed_steps`），二者之差是 k 步的时间，1000 步记为 2 步的时间加上 998 步，"
              "这样只付一次的开销（例如 `torch.compile` 的编译）只算一次，记在 JSON 的 `one_off_s` 里）。"
              "“相对”两列是快了多少倍。内存一列是计时之后每种写法再单独运行一次时，内存比运行开始时多占用的峰值"
              "（CPU 上是进程的常驻内存，GPU 上是 PyTorch 分配的显存），包括这次运行自己建的模型、优化器状态和激活。", ""]
    results = os.path.join(ROOT, "bench", "results")  # every bench_gpu*.json a GPU run left there
    gpu = sorted(os.path.basename(p) for p in glob.glob(os.path.join(results, "bench_gpu*.json")))
    skipped = {}
    for name, label in [("bench_cpu.json", "CPU")] + [(g, "GPU") for g in gpu]:
        path = os.path.join(results, name)
        if os.path.isfile(path):
            b = json.load(open(path, encoding="utf-8"))
            lines += [f"### {label}", ""] + bench_table(b)
            skipped.update(b.get("skipped", {}))
    if not gpu:
        lines += ["现在的代码还没有在 GPU 上测过；`tools/gpu_bench.sh` 是在借来的 GPU 上一次跑完这些行的脚本。", ""]
    lines += ["## 提速的几个选择", "",
              "`ddpm_lib` 的采样和训练只是论文的算法 2 和算法 1；更快的办法都是调用者自己做的一个选择，每个都是一个库调用：", "",
              "- **更少的步数**（{doc}`07_fast_sampling`）。每一步都要跑一次网络，采样的时间与步数成正比；"
              "少走步数的采样器（DDIM 等）把 1000 步减到几十步，省下的时间按倍数计，上表中任何一个选择都比不上。"
              + fewer_steps_sentence(results),
              "- **bf16 自动混合精度**（`precision=\"bf16\"`、`--precision bf16`）：模型在 `torch.autocast` 下运行。"
              "要有 bf16 运算单元它才可能快（GPU，以及带 AVX512-BF16 或 AMX 的 CPU），没有时是模拟出来的。"]
    if skipped:
        probes = [f"`{what.split()[0]}` 32 张图的一次前向 {v['forward_ms_32_images']['bf16']} ms，"
                  f"fp32 是 {v['forward_ms_32_images']['fp32']} ms" for what, v in skipped.items()]
        lines[-1] += ("本页测量用的 CPU 就没有（见上面的测量设备）：" + "；".join(probes)
                      + "。所以上表没有计时 bf16 的各行。")
    lines[-1] += precision_sentence()
    lines += [compile_paragraph(results)]
    lines += ["- **channels_last**（`model.to(memory_format=torch.channels_last)`、`--channels-last`）：改变内存布局，"
              "不改变计算；上表中 `basic-fixed` 的 5×5 卷积从中受益。",
              ""]
    return "\n".join(lines)


def fewer_steps_sentence(results):
    """bench/fast_sampling.py's row, as a sentence (empty if it has not been run)."""
    path = os.path.join(results, "fast_sampling_cpu.json")
    if not os.path.isfile(path):
        return ""
    b = json.load(open(path, encoding="utf-8"))
    parts = [f"{k} {v:.1f} 秒（{b['times_fewer_seconds_than_the_pipeline'][k]:.0f}×）"
             for k, v in b["values"].items()]
    return (f"`bench/fast_sampling.py` 在同一个进程中交替计时 `unet2d` 的 {b['images']} 个数字"
            f"（{b['device']}，每种 {b['repeats']} 次取中位数）：" + "；".join(parts) + "。")


def precision_sentence():
    """Chapter 8's measurements of the CPU recipe's speed with each precision forced, per CPU."""
    path = os.path.join(ROOT, "book", "results", "ch8_runs.json")
    if not os.path.isfile(path):
        return ""
    runs = json.load(open(path, encoding="utf-8"))
    first, fp32 = runs["rows"]["first-try"], runs["rows"]["fp32"]
    parts = [f"带 bf16 单元的 AMD EPYC 上，第 8 章消融表的第一行 bf16 每秒 {first['images_per_s']:.0f} 张、"
             f"fp32 {fp32['images_per_s']:.0f} 张（bf16 快 {first['images_per_s'] / fp32['images_per_s']:.1f} 倍）"]
    for e in runs.get("precision", {}).values():
        units = "、".join(e["cpu"]["bf16_units"]) or "无"
        parts.append(f"{e['cpu']['model_name']}（PyTorch 的 CPU 指令集 {e['cpu']['torch_capability']}，"
                     f"bf16 单元：{units}）上，配方 bf16 每秒 {e['images_per_s bf16']:.0f} 张、"
                     f"fp32 {e['images_per_s fp32']:.0f} 张（bf16 慢 {1 / e['bf16_speedup']:.1f} 倍）")
    return ("第 8 章在同一种 2 核机器的两种 CPU 上强制两种精度测过配方的训练速度：" + "；".join(parts)
            + "。所以配方的默认值是 `--precision auto`：没有 bf16 单元的 CPU 直接用 fp32，"
            "有的话两种各计时几步，留下快的。")


def write_page(info):
    with open(os.path.join(ROOT, "book", "timings.md"), "w", encoding="utf-8") as f:
        f.write(render_page(info))
    print(f"total {sum(r['seconds'] for r in info['rows']):.1f} s -> book/timings.md")


if __name__ == "__main__":
    write_page(json.load(open(SAVED, encoding="utf-8")) if "--page-only" in sys.argv
               else measure(inplace="--inplace" in sys.argv,
                            only=[a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]))
