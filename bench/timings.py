"""`make timings`: execute every notebook in book/ (without changing it), time each, save the
numbers (each notebook, and each code cell from nbclient's execution timestamps) in
bench/results/notebook_timings.json and write book/timings.md, the page the book shows, together
with the latest benchmark tables from bench/results/bench_*.json. tests/test_book_text.py checks
the running times the chapters quote against the saved cell times.

    python bench/timings.py              # execute and time, then write the page
    python bench/timings.py --page-only  # rewrite the page from the saved numbers
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


def measure():
    import nbformat
    import torch
    from nbclient import NotebookClient

    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "book", "*.ipynb"))):
        nb = nbformat.read(path, as_version=4)
        title = next(c.source.splitlines()[0].lstrip("# ") for c in nb.cells if c.cell_type == "markdown")
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=1200, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        seconds = round(time.perf_counter() - t0, 1)
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


def bench_table(path):
    b = json.load(open(path, encoding="utf-8"))
    lines = [f"测量设备：{b['device']}，PyTorch {b['torch']}，每项 {b['repeats']} 次交替重复取中位数"
             + ("（每轮换一个先后顺序）" if b.get("order") else "") + ("（`--quick`）" if b["quick"] else "") + "。", "",
             "| 基准 | 朴素写法 | ddpm_lib | 倍数 | 单位 | 内存增量峰值 MiB（朴素 / ddpm_lib） |", "|---|---:|---:|---:|---|---:|"]
    for r in b["rows"]:
        m = r.get("peak_extra_mib")
        mem = f"{m['plain']} / {m['ddpm_lib']}" if m else f"{r['peak_mib']}（两者共用一个峰值）"
        lines.append(f"| {r['what']} | {r['plain']} | {r['ddpm_lib']} | {r['ratio']}× | {r['unit']} | {mem} |")
    return lines + [""]


def bf16_sentence():
    path = os.path.join(ROOT, "bench", "results", "bf16_sampling.json")
    if not os.path.isfile(path):
        return ""
    b = json.load(open(path, encoding="utf-8"))
    parts = [f"`{k}` 平均像素差 {b[k]['mean_abs_diff']:.4f}、最差一张 {b[k]['worst_image_mean_abs_diff']:.3f}、"
             f"分类器读出同一个数字 {b[k]['same_digit']}" for k in ("basic-fixed", "unet2d")]
    return (f"bf16 采样与 fp32 采样（同一生成器，{b['images']} 张、{b['steps']} 步，像素范围 $[-1,1]$）的差别："
            + "；".join(parts) + "（`bench/bf16_sampling.py`；`tests/test_fast_paths.py` 检验平均差 < 0.02、"
            "每张 < 0.1、8 张中至少 7 张读出同一个数字）。")


def layers_table():
    path = os.path.join(ROOT, "bench", "results", "layers_cpu.json")
    if not os.path.isfile(path):
        return []
    b = json.load(open(path, encoding="utf-8"))
    lines = [f"测量设备：{b['device']}，PyTorch {b['torch']}，每批 {b['batch']} 张。", "",
             "| 层 | 原写法（毫秒） | 快速路径（毫秒） | 倍数 | 输出最大差 |", "|---|---:|---:|---:|---:|"]
    for r in b["rows"]:
        lines.append(f"| {r['what']} | {r['plain_ms']} | {r['fast_ms']} | {r['ratio']}× | {r['max_abs_diff']:.1g} |")
    return lines + [""]


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
        "笔记本里只有短暂的现场训练和采样；耗时最多的是第 6 章两次 1000 步的采样。",
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
              "`make bench`（`bench/bench.py`）在同一个进程中交替运行 `ddpm_lib` 与读者照底稿会写的朴素代码："
              "训练比较的是 `ddpm_lib.train` 与 `DDPMScheduler.add_noise` + AdamW + fp32 + 每批 128 张的循环（图/秒，越大越好）；"
              "采样比较的是 `ddpm_lib.sample` 与 `diffusers` 的 `DDPMPipeline`（同一权重，`clip_sample=False`，64 张图、1000 步的秒数，越小越好；"
              "CPU 上每种写法各计时一次 2 步、一次 52 步的运行：二者之差是 50 步的时间，1000 步的时间记为 2 步运行的时间加上 998 步，"
              "这样每次调用只付一次的开销（`ddpm_lib` 在第一步录制 TorchScript trace，见下文）只算一次）。"
              "内存一列是计时之后每个函数再单独运行一次时，内存比运行开始时多占用的峰值："
              "CPU 上是进程的常驻内存（Linux 的 VmHWM，开始前归零，减去开始时的 VmRSS），GPU 上是 PyTorch 分配的显存；"
              "它包括这次运行自己建的模型、优化器状态和激活。", ""]
    results = os.path.join(ROOT, "bench", "results")  # every bench_gpu*.json a GPU run left there
    gpu = sorted(os.path.basename(p) for p in glob.glob(os.path.join(results, "bench_gpu*.json")))
    for name, label in [("bench_cpu.json", "CPU")] + [(g, "GPU") for g in gpu]:
        path = os.path.join(results, name)
        if os.path.isfile(path):
            lines += [f"### {label}", ""] + bench_table(path)
            if label == "GPU" and not any("batch 2048" in r["what"] for r in json.load(open(path))["rows"]):
                lines += ["这次 GPU 运行早于现在的 `bench/bench.py`：表中没有每批 2048 张的训练行，内存是两者共用的一个峰值。"
                          "`bench/gpu_bench.sh` 是在 GPU 上重测这些行的一键脚本。", ""]
    lines += ["GPU 上 `ddpm_lib.train` 的快速路径是 bf16 自动混合精度、channels_last、fused AdamW、`torch.compile` 和每批 512 张；"
              "`ddpm_lib.sample` 在 CUDA 上把每一步的网络前向录成 CUDA graph 重放（结果与普通循环逐位相同，见 `bench/results/gpu_checks.json`）。", "",
              "CPU 上的杠杆（测试逐一把它们与普通路径对照）：", "",
              "- **把一批分成两半、两个线程各占一半的核**（`ddpm_lib/fastpaths.py` 的 `split_batch`）。"
              "`UNet2DModel` 在 14×14、7×7 上的算子太小，一个算子用不满两个核；两半批次互相独立，各占一个核就都忙起来了。"
              "采样在每批 32 张及以上时默认打开（`sample(fast=True)`；更小的批次里，一个批次用上全部的核反而更快，测量值见 `ddpm_lib/sampling.py` 中 `SPLIT_MIN_BATCH` 的注释）；训练可选（`train(split_batch=True)`、`--split-batch`），"
              "两半的梯度相加，与整批的梯度只差浮点舍入。表中 `train unet2d` 一行用的就是它。"
              "另一半所在的工作线程在整次采样或训练（`threads_per_part` 块）里只建一次：每步新建的线程都从冷的线程级状态开始（只算前向时每步缺页 20,700 对 9,000 次），"
              "64 张图的 `UNet2DModel` 采样每步 297 ms，保留线程后 290 ms（同一进程交替 4 次的中位数）。",
              "- **更省的层**（`fastpaths.fast_inference`，CPU 上每批 4 张及以上的采样自动使用；更小的批次里，它多出的小运算与省下的差不多；训练不用）。在 `with` 块内把模型的几个层换成同一数学的更省写法，"
              "块结束后换回：注意力（`ChannelFirstAttnProcessor`：$q,k,v$ 由一次矩阵乘法算出，每个头多一行“全 1”（权重 0、偏置 1），"
              "softmax 的分母就在 $PV$ 那次矩阵乘法里顺带算出；softmax 写成 $2^{z\\log_2 e}/\\sum$，$\\log_2 e/\\sqrt{d}$ 并入 $q$ 的权重，"
              "因为这台 CPU 上 PyTorch 的 `exp2` 比 `exp` 快得多（表中第一行）；只有当 $|q\\cdot k|\\le\\|q\\|\\|k\\|$ 这个上界允许分数达到 96（以 2 为底）时才减去每个查询的最大分数）；"
              "只有 1 个输出通道的卷积（两个模型的最后一层：一次矩阵乘法得到每个抽头的图，再错位相加）；"
              "`Upsample2D`（最近邻放大 2 倍再做 3×3 卷积：输出像素 $(2i+a,2j+b)$ 只看到小图的 2×2 邻域，四个相位各是一个权重相加后的 2×2 卷积，"
              "不生成放大后的张量，乘加约为原来的 4/9；NHWC 输入时四个相位合成一个步长 2、4×4 核的转置卷积）；`ResnetBlock2D` 和 `BasicUNet` 的前向（同样的层、同样的顺序，激活和加法原地完成，"
              "结果逐位相同，少分配几个新张量）。"
              "含 GroupNorm 的模型（`UNet2DModel`）在块内还整体改用 NHWC（channels_last）布局：oneDNN 的卷积内部用分块布局，"
              "NCHW 的激活每次卷积前后都要重排一次（下表“NCHW -> NHWC”两行是单个卷积省下的部分）；卷积的权重换成 channels_last 的副本后（`conv_channels_last`，"
              "模型自己的权重不动），卷积直接读写 NHWC，这些重排就没有了。PyTorch 对 NHWC 的 GroupNorm 在 CPU 上比 NCHW 慢好几倍，"
              "所以 `group_norm` 用逐通道的 $\\sum x$、$\\sum x^2$ 求组均值和方差（PyTorch 自己的 NHWC 内核也是这么算的），再用一次 `addcmul` 完成仿射（它仍比 NCHW 的 GroupNorm 慢，见下表，但省下的重排更多）；"
              "注意力把 NHWC 的输入直接当作 (B, HW, C) 的行来读，输出也是 NHWC。"
              "下表是 `bench/layers.py` 在一个线程、32 张图（一个采样线程的份额）、发布权重上逐层对照的结果：", ""]
    lines += layers_table()
    lines += [
              "- **TorchScript trace**（`fastpaths.traced`，CPU 上 fp32 采样自动使用，只用于本书的三种模型：`fastpaths.traceable` 检查"
              "它们的前向只按形状和设置分支、从不按数值分支，没有挂钩子）。采样的第一步用 `torch.jit.trace` 把网络的前向录成一张图，"
              "之后每步由 TorchScript 的优化执行器重放，算子之间不再经过 Python。录制时做出的 Python 决定都被固定下来："
              "形状由每个形状一张图保证；注意力里“要不要减去最大分数”取决于数值，所以图还输出每个注意力层的上界，"
              "某一步哪一层的决定与录制时不同，这一步就改用普通的前向重算（`tests/test_fast_paths.py` 检验这一点，也检验重放与普通前向逐位相同）。"
              + trace_sentence(os.path.join(results, "profile_cpu.json")),
              "- **channels_last**（`channels_last=True`、`--channels-last`）。`BasicUNet` 的 5×5 卷积在 NHWC 布局下更快"
              "（表中 `basic`、`basic-fixed` 的各行都用它）。`UNet2DModel` 不要用它：把整个模型转成 channels_last，GroupNorm 就落到 PyTorch 的 NHWC 内核上"
              "（上表两行 GroupNorm 的“原写法”一列：NHWC 内核比 NCHW 内核慢得多）；它的采样在上面的 `fast_inference` 里只在块内用 NHWC，GroupNorm 换成 `group_norm`。",
              "- **bf16**（可选，`precision=\"bf16\"`、`--precision bf16`，表中 “bf16 opt-in” 各行）。这台 CPU 有 AVX512-BF16 指令，"
              "`BasicUNet` 的卷积和 `UNet2DModel` 的采样都明显变快；`UNet2DModel` 的训练加上 bf16 并不比只分半批更快（表中 `train unet2d` 的两行）。"
              "本书第 5 章发布的 `basic-fixed` 就是在这台 2 核 CPU 上用 bf16 训练的（不到半小时）。"
              + bf16_sentence(), ""]
    lines += profile_section(os.path.join(results, "bench_cpu.json"))
    return "\n".join(lines)


def trace_sentence(path):
    """The traced step against the eager one, from bench/profile_cpu.py's numbers."""
    if not os.path.isfile(path):
        return ""
    p = json.load(open(path, encoding="utf-8"))
    if "two_threads_2x32_traced_ms" not in p:
        return ""
    eager, traced = p["two_threads_2x32_ms"], p["two_threads_2x32_traced_ms"]
    return (f"`bench/profile_cpu.py` 量得 64 张图的 `UNet2DModel` 采样一步（两个线程各 {p['batch']} 张，`fast_inference` 打开）"
            f"普通前向 {eager} ms，重放 trace {traced} ms（{eager / traced:.2f} 倍，交替 5 轮的中位数）；"
            "录制发生在每次采样调用的第一步，只付一次（基准表 `one_off_s`：`bench/results/bench_cpu.json`）；"
            "录制的那一步占用的内存比普通的一步多，所以采样的内存增量峰值高于不录制时"
            "（`fastpaths.traced` 的说明里有测量值；见基准表的内存一列）。")


def profile_section(bench_path):
    """Where one UNet2DModel sampling step's time goes (bench/results/profile_cpu.json)."""
    path = os.path.join(ROOT, "bench", "results", "profile_cpu.json")
    if not os.path.isfile(path):
        return []
    p = json.load(open(path, encoding="utf-8"))
    ms, total = p["ms_per_forward"], p["profiled_ms"]
    gap = 100 * abs(p["two_threads_2x32_ms"] / p["one_thread_32_ms"] - 1)
    at_peak = p["conv_gflops"] >= 0.9 * p["gemm_2048_gflops"]  # as fast as a large GEMM on this core
    labels = {"conv": "卷积（oneDNN，含上采样的转置卷积）",
              "matmul": "矩阵乘（注意力的 $q,k,v$、$QK^\\top$、$PV$ 与输出投影，时间嵌入，最后一层卷积的 GEMM）",
              "exp2": "`exp2`（注意力的 softmax）",
              "other": "其余（GroupNorm、SiLU、加法、拼接、复制等逐元素运算与归约）"}
    lines = ["### `UNet2DModel` 采样的一步，时间花在哪里", "",
             f"`bench/profile_cpu.py`（`make bench` 也运行它）用 `torch.profiler` 拆开一次前向：{p['batch']} 张图、一个线程、全部快速路径打开，"
             "也就是一个采样线程每步的工作；按算子的自身时间分类。"
             f"测量设备：{p['device']}，PyTorch {p['torch']}。", "",
             f"| 类别 | 毫秒/次前向 | 占比（剖析总计 {total} ms） |", "|---|---:|---:|"]
    lines += [f"| {labels[k]} | {v} | {100 * v / total:.0f}% |" for k, v in ms.items()]
    text = (f"这些卷积共 {p['conv_gflop']} GFLOP，以 {p['conv_gflops']} GFLOP/s 运行；"
            f"同一个线程上一次 2048×2048 的 fp32 矩阵乘是 {p['gemm_2048_gflops']} GFLOP/s")
    text += "：卷积不比大矩阵乘慢，已在这颗核 fp32 算力的极限附近，能省的只在后三行。" if at_peak else "。"
    text += (f"两个线程各算 {p['batch']} 张（采样分半批的做法，普通前向）每步 {p['two_threads_2x32_ms']} ms，"
             f"一个线程单独算 {p['batch']} 张 {p['one_thread_32_ms']} ms（交替 5 轮的中位数），二者相差 {gap:.1f}%")
    text += "：两个线程几乎互不拖累。" if gap < 5 else "。"
    ours = p.get("two_threads_2x32_traced_ms", p["two_threads_2x32_ms"])  # what sample() runs
    if "two_threads_2x32_traced_ms" in p:
        text += f"采样实际重放的是 trace（见上文），同样的一步 {ours} ms。"
    b = json.load(open(bench_path, encoding="utf-8")) if os.path.isfile(bench_path) else {"rows": []}
    plain = [r["plain"] for r in b["rows"] if r["what"].startswith("sample unet2d") and "bf16" not in r["what"]]
    if plain:
        step = plain[0]  # seconds per 1000 steps = milliseconds per step
        text += (f"基准表中朴素写法的采样每步 {step} ms（1000 步 {step} 秒），与这里的 {ours} ms 相比是 "
                 f"{step / ours:.2f} 倍（两次不同的运行）"
                 + ("。卷积既已省不下来，fp32 下再快就很难了；要更快就得换精度（表中 bf16 一行）。" if at_peak else "。"))
    return lines + ["", text, ""]


def write_page(info):
    with open(os.path.join(ROOT, "book", "timings.md"), "w", encoding="utf-8") as f:
        f.write(render_page(info))
    print(f"total {sum(r['seconds'] for r in info['rows']):.1f} s -> book/timings.md")


if __name__ == "__main__":
    write_page(json.load(open(SAVED, encoding="utf-8")) if "--page-only" in sys.argv else measure())
