"""Command line: ``python -m ddpm_lib train ...`` (a run folder of checkpoints; ``--resume``
continues it with no lost or repeated step; the same command runs on N processes under
``accelerate launch``) and ``python -m ddpm_lib sample ...``."""
import argparse
import os
import platform
import sys
import time

import torch

from .checkpoints import (PRETRAINED, WEIGHTS_DIR, commit_run_checkpoint, load_checkpoint,
                          load_tensors, load_training_state, pretrained, read_config,
                          resolve_checkpoint)
from .data import SOURCES, load_mnist
from .fast_sampling import SPACINGS, ddim_sample, respaced_sample
from .guidance import DEFAULT_GUIDANCE_SCALE
from .models import MODEL_NAMES, build_model, num_classes
from .schedule import NoiseSchedule
from .targets import PREDICTION_TYPES
from .training import choose_precision, cosine_lr, cpu_capability, make_ema, train

# chapter 8's recipe for a CPU (book/08_cpu_training.ipynb measures each choice); flags given
# beside --recipe override it
RECIPES = {"cpu": dict(model="unet2d-small", batch_size=64, lr=2e-3, precision="auto",
                       prediction_type="v_prediction", snr_gamma=5.0, schedule="cosine",
                       ema_decay=0.999)}
SCHEDULES = {"linear": NoiseSchedule.linear, "cosine": NoiseSchedule.cosine}


def _checked(cast, ok, what):
    """An argparse type: cast the text, then require ok(value); the error names what was expected."""
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")


def _common_options(p, func, precisions=("fp32", "bf16")):  # what train and sample share
    p.set_defaults(func=func)  # func runs the command
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--precision", choices=precisions, default="fp32",
                   help="bf16: the model under torch.autocast (GPUs, CPUs with bf16 units); "
                   "auto (train): the faster of the two on this machine, measured at the start")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true")


def build_parser(recipe=None):
    p = argparse.ArgumentParser(prog="python -m ddpm_lib", description="Train and sample the book's DDPM models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a denoiser on MNIST with L_simple")
    t.add_argument("--recipe", choices=RECIPES, help="a preset of the options below (chapter 8)")
    t.add_argument("--model", choices=MODEL_NAMES, help="required unless --recipe gives it")
    t.add_argument("--steps", required=True, type=_positive_int, help="total optimizer steps")
    t.add_argument("--minutes", type=_positive_float, default=None,
                   help="also stop at the first checkpoint after this much training wall time")
    t.add_argument("--keep", type=_non_negative_int, default=2,
                   help="checkpoints kept in --out (0: all)")
    t.add_argument("--channels", type=_checked(lambda v: tuple(map(int, v.split(","))),
                   lambda v: len(v) >= 2 and min(v) > 0, "channels like 16,32,64"),
                   default=(16, 32, 64), help="unet2d-small: block_out_channels")
    t.add_argument("--layers-per-block", type=_positive_int, default=1, help="unet2d-small")
    t.add_argument("--attention", action="store_true", help="unet2d-small: self-attention at 7x7")
    t.add_argument("--conditional", action="store_true",
                   help="unet2d-small: class-conditional on the digit, for guidance (chapter 9)")
    t.add_argument("--p-uncond", type=_checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
                   default=0.1, help="--conditional: probability of the null label in training")
    t.add_argument("--prediction-type", choices=PREDICTION_TYPES, default="epsilon")
    t.add_argument("--snr-gamma", type=_positive_float, default=None, help="min-SNR-gamma weighting")
    t.add_argument("--schedule", choices=SCHEDULES, default="linear")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=_positive_float, default=1e-3)
    t.add_argument("--lr-decay", choices=("constant", "cosine"), default="constant",
                   help="cosine: from --lr down to 0 at --steps (chapter 8)")
    t.add_argument("--out", required=True, help="run folder (checkpoints go here)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    t.add_argument("--checkpoint-every", type=_positive_int, default=500, help="steps between checkpoints")
    t.add_argument("--data", choices=SOURCES, default="embedded", help="MNIST source (default: embedded 4,000 digits)")
    t.add_argument("--num-timesteps", type=_positive_int, default=1000)
    t.add_argument("--ema-decay", type=_positive_float, default=0.999)
    _common_options(t, cmd_train, precisions=("auto", "fp32", "bf16"))
    t.set_defaults(**RECIPES.get(recipe, {}))  # after every option exists
    s = sub.add_parser("sample", help="draw samples from a checkpoint and save a grid")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoint", help="checkpoint folder, or a run folder with 'latest'")
    where.add_argument("--pretrained", choices=PRETRAINED, help="a model shipped with ddpm_lib")
    s.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    s.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default: all T for ddpm, 50 for ddim; fewer = respaced)")
    s.add_argument("--eta", type=_checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                   default=None, help="DDIM's eta (default 0: deterministic)")
    s.add_argument("--spacing", choices=SPACINGS, default="leading", help="which timesteps to visit")
    s.add_argument("-n", type=_positive_int, default=64, help="number of images")
    s.add_argument("--out", required=True, help="PNG file for the grid")
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--label", type=_checked(int, lambda v: 0 <= v <= 9, "a digit 0-9"), default=None,
                   help="conditional model: the digit to draw (default: 0, 1, …, 9, 0, … in turn)")
    s.add_argument("--guidance", type=_checked(float, lambda v: v >= 0, "a number >= 0"),
                   default=DEFAULT_GUIDANCE_SCALE, help="conditional model: guidance scale s = 1 + w "
                   f"(1: no guidance, 0: unconditional; default {DEFAULT_GUIDANCE_SCALE})")
    s.add_argument("--nrow", type=_positive_int, default=8)
    _common_options(s, cmd_sample)
    return p


def _device(name):
    """The --device given, else the best available: cuda, then mps, then the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def _prepare(model, args):
    """The caller's speed choices: channels_last memory format, torch.compile."""
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if args.compile else model


def _accelerator(args, precision):
    """Accelerate's view of this process: one of N under ``accelerate launch`` / torchrun, or
    the only one; bf16 is its mixed precision (torch.autocast)."""
    from accelerate import Accelerator

    device = _device(args.device)
    return Accelerator(cpu=device.type == "cpu",
                       mixed_precision="bf16" if precision == "bf16" else "no")


def _model_kwargs(args):
    return dict(block_out_channels=args.channels, layers_per_block=args.layers_per_block,
                attention=args.attention, num_classes=10 if args.conditional else None) \
        if args.model == "unet2d-small" else {}


def _auto_precision(args, data, schedule):
    """--precision auto: training.choose_precision on a throwaway copy of the run's model
    (same seed, same options); several processes decide by the CPU's flags alone, so that
    they agree. Returns (precision, provenance) and prints both."""
    device = _device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type == "cpu":
        cpu = cpu_capability()
        precision = "bf16" if cpu["bf16_units"] else "fp32"
        about = {"cpu": cpu, "seconds_per_step": None, "reason": "several processes: the flags alone"}
    else:
        torch.manual_seed(args.seed)
        trial = build_model(args.model, num_timesteps=args.num_timesteps, **_model_kwargs(args))
        precision, about = choose_precision(
            trial.to(device), data.images, schedule, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, prediction_type=args.prediction_type, snr_gamma=args.snr_gamma,
            labels=data.labels if args.conditional else None, p_uncond=args.p_uncond)
    cpu = about.get("cpu", {})
    print(f"precision auto: {precision} ({about['reason']}; seconds per step "
          f"{about.get('seconds_per_step')}; CPU {cpu.get('model_name', device.type)}, bf16 units "
          f"{cpu.get('bf16_units')}, torch capability {cpu.get('torch_capability')})", flush=True)
    return precision, dict(about, asked="auto", chosen=precision)


def cmd_train(args, argv):
    if args.recipe:  # the recipe's values, then the flags typed beside it
        args = build_parser(recipe=args.recipe).parse_args(argv)
    if args.model is None:
        raise SystemExit("error: train needs --model (or a --recipe that gives it)")
    if args.conditional and args.model != "unet2d-small":
        raise SystemExit("error: --conditional needs --model unet2d-small")
    has_run = os.path.isfile(os.path.join(args.out, "latest"))
    if has_run and not args.resume:
        raise SystemExit(f"error: {args.out} already holds a run; pass --resume to continue it "
                         "or choose another --out")
    if args.resume and not has_run:
        raise SystemExit(f"error: --resume given but {args.out} holds no checkpoint")
    schedule = SCHEDULES[args.schedule](num_timesteps=args.num_timesteps)
    data = load_mnist("train", source=args.data)
    precision, chosen = args.precision, {"asked": args.precision, "chosen": args.precision}
    if args.precision == "auto" and args.resume:  # a run keeps the precision it chose
        old = read_config(args.out)["meta"]
        precision, chosen = old["precision"], old.get("precision_choice", chosen)
    elif args.precision == "auto":
        precision, chosen = _auto_precision(args, data, schedule)
    accelerator = _accelerator(args, precision)
    device, main_process = accelerator.device, accelerator.is_main_process
    torch.manual_seed(args.seed)  # the model's initial weights depend on the seed alone
    model = build_model(args.model, num_timesteps=args.num_timesteps, **_model_kwargs(args)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    ema = make_ema(model, decay=args.ema_decay)
    meta = {"model": args.model, "step": 0, "steps": args.steps, "batch_size": args.batch_size,
            "lr": args.lr, "lr_decay": args.lr_decay, "seed": args.seed, "data": data.source,
            "num_train_images": int(data.images.shape[0]), "num_timesteps": args.num_timesteps,
            "ema_decay": args.ema_decay, "precision": precision, "precision_choice": chosen,
            "recipe": args.recipe,
            "prediction_type": args.prediction_type, "snr_gamma": args.snr_gamma,
            "schedule": args.schedule, "conditional": args.conditional,
            "p_uncond": args.p_uncond if args.conditional else None, "processes": accelerator.num_processes,
            "channels_last": args.channels_last, "compile": args.compile, "commands": [],
            "hardware": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{device.type} ({os.cpu_count()} cores, {platform.machine()}, "
            f"{cpu_capability()['model_name']})",
            "torch": torch.__version__, "wall_time_s": 0.0,
            "losses": []}
    if args.resume:
        old = read_config(args.out)["meta"]
        same = ("model", "seed", "batch_size", "prediction_type", "schedule", "conditional", "p_uncond")
        if any(old.get(k, meta[k]) != meta[k] for k in same):
            raise SystemExit("error: --resume needs the same --model, --seed, --batch-size, "
                             "--prediction-type, --schedule, --conditional and --p-uncond as the run (it has "
                             + ", ".join(f"{k} {old.get(k)}" for k in same) + ")")
        if old.get("lr_decay", "constant") != args.lr_decay or (
                args.lr_decay == "cosine" and old["steps"] != args.steps):
            raise SystemExit("error: --resume needs the run's --lr-decay, and with cosine its --steps "
                             f"(it has {old.get('lr_decay', 'constant')}, {old['steps']} steps)")
        model.load_state_dict(load_tensors(args.out, "model"))
        load_training_state(args.out, optimizer, ema)
        for group in optimizer.param_groups:  # the saved state holds the old run's --lr
            group["lr"] = args.lr
        meta.update({k: old[k] for k in ("step", "losses", "wall_time_s", "commands")})
    launcher = f"accelerate launch --num_processes {accelerator.num_processes} -m ddpm_lib " \
        if accelerator.num_processes > 1 else "python -m ddpm_lib "
    meta["commands"] = meta["commands"] + [launcher + " ".join(argv)]
    if meta["step"] >= args.steps:
        print(f"nothing to do: the run is at step {meta['step']} >= --steps {args.steps}")
        return 0
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net, optimizer = accelerator.prepare(model, optimizer)  # DDP and autocast where asked
    net = torch.compile(net) if args.compile else net
    lr = cosine_lr(args.lr, args.steps) if args.lr_decay == "cosine" else args.lr
    first, t_start = meta["step"], time.perf_counter()
    last_good = resolve_checkpoint(args.out) if has_run else None
    # train() is deterministic per (seed, step): a run in chunks between checkpoints, resumed
    # or not, on any number of processes, is the same run
    for start in range(first, args.steps, args.checkpoint_every):
        stop, t0 = min(start + args.checkpoint_every, args.steps), time.perf_counter()
        try:
            losses = train(net, data.images, schedule, steps=stop, batch_size=args.batch_size,
                           lr=lr, seed=args.seed, optimizer=optimizer, ema=ema, start_step=start,
                           prediction_type=args.prediction_type, snr_gamma=args.snr_gamma,
                           labels=data.labels if args.conditional else None,
                           p_uncond=args.p_uncond, accelerator=accelerator,
                           progress=not args.no_progress and main_process)
        except FloatingPointError as e:  # nothing of this piece is written
            raise SystemExit(f"error: {e}; nothing was saved since the newest checkpoint, "
                             f"untouched: {last_good or 'none (no checkpoint was written yet)'} "
                             "(resume from it with a smaller --lr)")
        meta.update(step=stop, losses=meta["losses"] + [round(x, 6) for x in losses],
                    wall_time_s=round(meta["wall_time_s"] + time.perf_counter() - t0, 3))
        if main_process:  # one writer: the processes hold the same weights
            path = last_good = commit_run_checkpoint(args.out, stop, model, args.model,
                                                     keep=args.keep, ema=ema,
                                                     optimizer=optimizer.optimizer, meta=meta)
            recent = meta["losses"][-100:]
            print(f"step {stop}/{args.steps}  loss(last {len(recent)}) "
                  f"{sum(recent) / len(recent):.4f}  checkpoint {path}", flush=True)
        accelerator.wait_for_everyone()
        # --minutes: stop when any process's clock has passed it, all at the same step
        late = torch.tensor(float(bool(args.minutes) and meta["wall_time_s"] >= 60 * args.minutes))
        if accelerator.reduce(late.to(device), "sum") > 0:
            break
    elapsed, done = time.perf_counter() - t_start, meta["step"] - first
    if main_process:
        print(f"trained {done} steps in {elapsed:.1f} s: {done * args.batch_size / elapsed:.1f} images/s")
    accelerator.end_training()
    return 0


def cmd_sample(args, argv):
    from torchvision.utils import save_image

    from .sampling import sample

    if args.eta is not None and args.sampler != "ddim":
        raise SystemExit("error: --eta is DDIM's parameter; add --sampler ddim")
    device = _device(args.device)
    if args.pretrained:
        model, cfg = pretrained(args.pretrained, device=device), read_config(
            os.path.join(WEIGHTS_DIR, args.pretrained))
    else:
        model, cfg = load_checkpoint(args.checkpoint, weights=args.weights, device=device)
    meta = cfg["meta"]  # the schedule and the target the model was trained with
    schedule = SCHEDULES[meta.get("schedule", "linear")](num_timesteps=meta.get("num_timesteps", 1000))
    T, net = schedule.num_timesteps, _prepare(model, args)
    steps = args.steps or (T if args.sampler == "ddpm" else min(50, T))
    kw = dict(generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress,
              precision=args.precision, prediction_type=meta.get("prediction_type", "epsilon"))
    shape = (args.n, 1, 28, 28)
    if num_classes(model) is not None:  # a conditional model: these digits, guided
        kw.update(labels=torch.full((args.n,), args.label) if args.label is not None
                  else torch.arange(args.n) % 10, guidance_scale=args.guidance)
    elif args.label is not None:
        raise SystemExit("error: --label needs a class-conditional model (train --conditional)")
    if args.sampler == "ddim":
        x = ddim_sample(net, schedule, shape, num_steps=steps, eta=args.eta or 0.0,
                        spacing=args.spacing, **kw)
    elif steps != T:  # fewer steps: respaced (more than T is rejected there)
        x = respaced_sample(net, schedule, shape, num_steps=steps, spacing=args.spacing, **kw)
    else:
        x = sample(net, schedule, shape, **kw)
    save_image((x.clamp(-1, 1) + 1) / 2, args.out, nrow=args.nrow, padding=2, pad_value=1.0)
    print(f"wrote {args.n} samples ({args.sampler}, {steps} steps) to {args.out}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except ValueError as e:  # ddpm_lib's input errors: one clear line, exit status 2
        print(f"error: {e}", file=sys.stderr)
        return 2
