"""bench/bench.py runs and writes the table it promises (a smoke test: no speed is asserted here;
`make bench` measures, and book/timings.md shows the measured numbers)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench  # noqa: E402
import torch  # noqa: E402


def test_alternate_rotates_the_order_and_takes_medians():
    calls = []

    def make(name, values):
        it = iter(values)
        return lambda: calls.append(name) or next(it)

    medians = bench.alternate([make("a", [3, 1, 2]), make("b", [10, 30, 20])], repeats=3)
    assert medians == [2, 20]
    assert calls == ["a", "b", "b", "a", "a", "b"]  # round r starts with function r mod n
    medians, memory = bench.alternate([make("a", [1, 2]), make("b", [3, 4])], repeats=2, device=torch.device("cpu"))
    assert medians == [1.5, 3.5] and all(m is not None and m >= 0 for m in memory)  # the last round measured


def test_sampling_time_for_1000_steps_from_two_run_lengths():
    runs = iter([(1.0, 9.0), (3.0, 5.0), (2.0, 4.0)])
    assert bench.alternate([lambda: next(runs)], repeats=3) == [(2.0, 5.0)]  # the median of each entry
    total, once = bench.per_1000(2.5, 7.5, 50)  # 0.1 s a step, 2.3 s once
    assert abs(total - (2.3 + 100.0)) < 1e-9 and abs(once - 2.3) < 1e-9


def test_peak_memory_of_one_run():
    def allocate():
        x = torch.ones(50_000_000)  # 191 MiB, touched
        return x.sum().item()

    bench.peak_extra_mib(allocate, torch.device("cpu"))  # a first run may keep freed heap around
    value, extra = bench.peak_extra_mib(allocate, torch.device("cpu"))
    assert value == 50_000_000 and 185 < extra < 260
    _, small = bench.peak_extra_mib(lambda: torch.ones(10).sum(), torch.device("cpu"))
    assert small < 20  # the previous run's 191 MiB is not counted again


def test_quick_cpu_run_writes_the_table(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"), "--quick", "--models", "basic-fixed",
                    "--json", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=600)
    info = json.loads(out.read_text())
    assert info["quick"] is True and info["repeats"] == 2 and info["device"].startswith("cpu")
    assert [r["what"] for r in info["rows"]] == ["train basic-fixed", "sample basic-fixed (64 images, 1000 steps)"]
    train, samp = info["rows"]
    # the outside anchor first, then the plain ddpm_lib path, then each lever on its own; bf16
    # only where the CPU has bf16 units (else the reason is recorded, with the probe's times)
    levers = ["bf16", "channels_last"] if not info["skipped"] else ["channels_last"]
    assert set(info["skipped"]) <= {"basic-fixed bf16"}
    assert all(s["forward_ms_32_images"]["bf16"] > 1.5 * s["forward_ms_32_images"]["fp32"]
               for s in info["skipped"].values())
    assert list(train["values"]) == ["plain loop", "ddpm_lib", *levers]
    assert list(samp["values"]) == ["DDPMPipeline", "ddpm_lib", *levers]
    for r in info["rows"]:
        assert min(r["values"].values()) > 0
        assert set(r["peak_extra_mib"]) == set(r["values"]) and min(r["peak_extra_mib"].values()) > 0


def test_speedup_reads_images_per_second_up_and_seconds_down():
    r = {"unit": "images/s", "values": {"a": 30.0, "b": 10.0}}
    assert bench.speedup(r, "a", "b") == 3.0
    r = {"unit": "s", "values": {"a": 30.0, "b": 10.0}}
    assert abs(bench.speedup(r, "a", "b") - 1 / 3) < 1e-12


def test_fewer_steps_bench_writes_its_row(tmp_path):
    out = tmp_path / "fast.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "fast_sampling.py"), "--repeats", "1",
                    "--n", "2", "--short", "20", "--json", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=600)
    info = json.loads(out.read_text())
    assert list(info["values"]) == ["DDPMPipeline, 1000 steps", "ddpm_lib.sample, 1000 steps",
                                    "ddim_sample, 20 steps", "ddim_sample, 10 steps",
                                    "DPM-Solver++(2M), 10 steps"]
    ratio = info["times_fewer_seconds_than_the_pipeline"]
    assert ratio["DDPMPipeline, 1000 steps"] == 1.0 and min(info["values"].values()) > 0
    # even a smoke run sees 1000 steps cost far more than 20 (no speed bar is asserted here)
    assert ratio["ddim_sample, 20 steps"] > 5
