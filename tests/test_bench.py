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
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"), "--quick", "--models", "basic",
                    "--json", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=600)
    info = json.loads(out.read_text())
    assert info["quick"] is True and info["repeats"] == 2 and info["device"].startswith("cpu")
    whats = [r["what"] for r in info["rows"]]
    assert whats == ["train basic", "train basic, bf16 opt-in", "sample basic-fixed (64 images, 1000 steps)",
                     "sample basic-fixed (64 images, 1000 steps), bf16 opt-in"]
    for r in info["rows"]:
        assert r["plain"] > 0 and r["ddpm_lib"] > 0
        assert set(r["peak_extra_mib"]) == {"plain", "ddpm_lib"} and min(r["peak_extra_mib"].values()) > 0
        # the ratio is "how many times better": images/s divide one way, seconds the other
        expected = r["ddpm_lib"] / r["plain"] if r["unit"] == "images/s" else r["plain"] / r["ddpm_lib"]
        assert abs(r["ratio"] - expected) <= 0.02 * expected + 0.01
    assert info["rows"][0]["ddpm_lib_settings"] == {"batch_size": 128, "channels_last": True}


def test_profile_counts_the_convolutions_multiply_adds():
    import profile_cpu
    from diffusers.models.upsampling import Upsample2D

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)  # 2 x (2*8*5*5 outputs) x (9*4) = 28,800
            self.up = Upsample2D(8, use_conv=True)  # 2 x (2*8*10*10 outputs) x (4 taps * 8) = 102,400
            self.out = torch.nn.Conv2d(8, 1, 3, padding=1)  # one output channel: a GEMM, not counted

        def forward(self, x, t):
            return self.out(self.up(self.conv(x)))
    assert profile_cpu.conv_flops(Net(), torch.randn(2, 4, 5, 5), None) == 28_800 + 102_400
