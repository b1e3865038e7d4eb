"""The recorded results the chapters draw (book/results/) are what their tools/ scripts compute
today: each is regenerated here and compared."""
import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_chapter1_reverse_chain_is_regenerated_by_its_tool():
    ch1 = tool("ch1_reverse_chain")
    recorded = json.load(open(ch1.OUT, encoding="utf-8"))
    assert recorded["k"] == ch1.K and recorded["seed"] == ch1.SEED
    frames = ch1.reverse_chain()
    diff = (frames - torch.tensor(recorded["frames"])).abs().max().item()
    assert diff < 1e-3, diff  # rounded to 5 decimals; a different seed or model differs by ~1
    assert frames[0].std() > 0.3 and frames[-1].std() > 0.8  # a digit at k = 0, noise at k = T


@pytest.mark.slow
def test_chapter9_unguided_row_is_regenerated_from_the_shipped_weights():
    # cpu-cfg is the EMA weights the measurement sampled; its w = 0 row (one network call a step)
    # is drawn again here and scored as tools/ch9_experiments.py scored it
    from safetensors.torch import load_file

    import ddpm_lib as dl
    from ddpm_lib import metrics
    from ddpm_lib.checkpoints import WEIGHTS_DIR, read_config

    ch9 = tool("ch9_experiments")
    recorded = json.load(open(ch9.RESULTS, encoding="utf-8"))["rows"]["0"]
    meta = read_config(os.path.join(WEIGHTS_DIR, "cpu-cfg"))["meta"]
    labels = ch9.requested()
    x = ch9.draw(dl.pretrained("cpu-cfg"), dl.NoiseSchedule.cosine(), meta, labels, 0)
    grid = ch9.grid_images(x).int()
    assert (grid - load_file(ch9.SAMPLES)["w=0"].int()).abs().max() <= 1
    classifier = metrics.load_classifier()
    ours = ch9.digit_scores(x, labels, classifier, ch9.class_references(classifier)[1])
    assert abs(ours["accuracy"] - recorded["accuracy"]) <= 1 / 260 + 1e-9
    assert abs(ours["confident"] - recorded["confident"]) <= 1 / 260 + 1e-9
    assert ours["frechet_class"] == pytest.approx(recorded["frechet_class"], rel=0.01)


@pytest.mark.slow
def test_chapter8_labels_row_is_regenerated_from_the_shipped_weights():
    # cpu-labels is the 10-minute checkpoint of the curve's run: its DDIM-50 row in ch8's
    # samplers table (labels from p(c), s = 1) is drawn again from the shipped weights
    from safetensors.torch import load_file

    import ddpm_lib as dl
    from ddpm_lib.checkpoints import WEIGHTS_DIR, read_config

    ch8 = tool("ch8_experiments")
    recorded = json.load(open(ch8.RESULTS, encoding="utf-8"))["samplers"]
    meta = read_config(os.path.join(WEIGHTS_DIR, "cpu-labels"))["meta"]
    x, ours = ch8.sampler_row(dl.pretrained("cpu-labels"), meta, dl.ddim_sample)
    row = recorded["recipe-conditional ddim50"]
    stored = load_file(ch8.SAMPLES)["recipe-conditional/ddim50"].int()
    assert (((x[:64].clamp(-1, 1) + 1) * 127.5).round().int() - stored).abs().max() <= 1
    assert ours["step"] == row["step"]
    assert abs(ours["confident"] - row["confident"]) <= 1 / 256 + 1e-9
    assert ours["frechet"] == pytest.approx(row["frechet"], rel=0.01)
    assert ours["entropy_bits"] == pytest.approx(row["entropy_bits"], abs=0.01)
    # control: the unconditional recipe's row differs in the confident share by 15 points
    assert abs(recorded["recipe ddim50"]["confident"] - ours["confident"]) > 0.1


def test_chapter8_spread_runs_are_the_rows_with_another_seed():
    # each recorded seed-spread run is its ablation row's flags, the row's recorded step count
    # as the budget and one training seed; nothing else changes
    ch8 = tool("ch8_experiments")
    recorded = json.load(open(ch8.RESULTS, encoding="utf-8"))
    flags = {name: f for name, _, f in ch8.ROWS}
    spread = recorded["spread"]
    assert sorted(spread) == sorted(f"{n} seed={s}" for n in ch8.SPREAD for s in ch8.SEEDS)
    for r in spread.values():
        steps = recorded["rows"][r["row"]]["step"]
        args = ["train", *ch8.FIRST_TRY, *flags[r["row"]], "--steps", str(steps),
                "--seed", str(r["seed"])]
        assert r["command"].split()[3:3 + len(args)] == args, r["command"]
        assert r["step"] == steps
