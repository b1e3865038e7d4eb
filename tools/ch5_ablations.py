"""The two single-fix ablations of chapter 5 at the chapter's budget (150 steps x 64 images,
lr 1e-3, seed 0, embedded digits): the seed's BasicUNet without its final SiLU (t still
unseen), and with t/T as an input channel (final SiLU kept). Writes every step's loss and the
loss by t (on the chapter's 512 fixed (x_0, t, eps)) to book/results/ch5_ablations.json; the
chapter replays the first steps of each. About a minute on a 2-core CPU:

    .venv/bin/python tools/ch5_ablations.py
"""
import json
import os
import sys

import torch

import ddpm_lib as dl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "book", "results", "ch5_ablations.json")
EDGES = (0, 50, 200, 400, 600, 800, 1000)
STEPS = 150  # the chapter's live trainings use the same budget


class NoFinalSiLU(dl.BasicUNet):  # fix 1 only: the output may be negative, t unseen
    final_act = False

    def forward(self, x, t=None):  # called as model(x_t, t) like any denoiser; t is ignored
        return super().forward(x)


class TimeInputOnly(dl.BasicUNetFixed):  # fix 2 only: t/T as an input channel, SiLU kept
    final_act = True


def loss_by_t(model, xb, nb):
    """The chapter's ``loss_by_t``: L_simple on 512 fixed digits and noises, t drawn per bin."""
    schedule, out = dl.NoiseSchedule.linear(), []
    with torch.no_grad():
        for lo, hi in zip(EDGES[:-1], EDGES[1:]):
            t = torch.randint(lo, hi, (512,), generator=torch.Generator().manual_seed(lo))
            out.append(dl.ddpm_loss(model, xb, schedule, t=t, noise=nb).item())
    return out


def main():
    train = dl.load_mnist("train", source="embedded")
    xb = train.images[:512]
    nb = torch.randn(xb.shape, generator=torch.Generator().manual_seed(2))
    results = {"budget": f"steps={STEPS}, batch_size=64, lr=1e-3, seed=0", "torch": torch.__version__}
    for name, cls in (("no final SiLU", NoFinalSiLU), ("t input only", TimeInputOnly)):
        torch.manual_seed(0)
        model = cls()
        losses = dl.train(model, train.images, dl.NoiseSchedule.linear(), steps=STEPS,
                          batch_size=64, lr=1e-3, seed=0, progress=False)
        results[name] = {"losses": [round(x, 6) for x in losses],
                         "loss_by_t": [round(x, 4) for x in loss_by_t(model.eval(), xb, nb)]}
        print(f"{name}: last 50 steps {sum(losses[-50:]) / 50:.3f}", flush=True)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
