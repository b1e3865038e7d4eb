"""Command line: ``python -m ddpm_lib train ...`` and ``python -m ddpm_lib sample ...`` (chapters 5–6).

train writes a run folder of atomic checkpoints (``step-NNNNNNN/`` + ``latest``) holding the
model, its EMA (warm-up decay) and the optimizer, so ``--resume`` continues with no lost or
repeated step: every step draws its batch from (seed, step) alone.
"""
import argparse
import os
import platform
import sys
import time

import torch

from .checkpoints import commit_run_checkpoint, load_checkpoint, load_ema_state, load_optimizer_state, read_config
from .data import SOURCES, load_mnist
from .device import default_device
from .models import MODEL_NAMES, build_model
from .schedule import NoiseSchedule
from .training import make_ema, make_optimizer, train


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


def _hardware(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores, {platform.machine()})"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m ddpm_lib", description="Train and sample the book's DDPM models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a denoiser on MNIST with L_simple")
    t.add_argument("--model", required=True, choices=MODEL_NAMES)
    t.add_argument("--steps", required=True, type=_positive_int, help="total optimizer steps")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=_positive_float, default=1e-3)
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--out", required=True, help="run folder (checkpoints go here)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    t.add_argument("--checkpoint-every", type=_positive_int, default=500, help="steps between checkpoints")
    t.add_argument("--data", choices=SOURCES, default="embedded", help="MNIST source (default: embedded 4,000 digits)")
    t.add_argument("--num-timesteps", type=_positive_int, default=1000)
    t.add_argument("--ema-decay", type=_positive_float, default=0.999)
    t.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    t.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast (GPUs; CPUs with bf16 instructions, e.g. BasicUNet)")
    t.add_argument("--channels-last", action="store_true",
                   help="channels_last memory format (GPU; CPU for basic models)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    t.add_argument("--split-batch", action="store_true",
                   help="CPU: two half-batches on two threads, gradients added (unet2d)")
    t.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("sample", help="draw samples from a checkpoint and save a grid")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder with 'latest'")
    s.add_argument("-n", type=_positive_int, default=64, help="number of images")
    s.add_argument("--out", required=True, help="PNG file for the grid")
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--weights", choices=("ema", "model"), default="ema")
    s.add_argument("--nrow", type=_positive_int, default=8)
    s.add_argument("--device", default=None)
    s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast (opt-in, faster)")
    s.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster for basic models on CPU)")
    s.add_argument("--save-tensor", default=None, help="also save the samples as safetensors here")
    s.add_argument("--no-progress", action="store_true")
    return p


def cmd_train(args, argv):
    device = torch.device(args.device) if args.device else default_device()
    has_run = os.path.isfile(os.path.join(args.out, "latest"))
    if has_run and not args.resume:
        raise SystemExit(f"error: {args.out} already holds a run; pass --resume to continue it or choose another --out")
    if args.resume and not has_run:
        raise SystemExit(f"error: --resume given but {args.out} holds no checkpoint")
    os.makedirs(args.out, exist_ok=True)
    schedule = NoiseSchedule.linear(num_timesteps=args.num_timesteps)
    data = load_mnist("train", source=args.data)
    torch.manual_seed(args.seed)  # the model's initial weights depend on the seed alone
    model = build_model(args.model, num_timesteps=args.num_timesteps).to(device)
    optimizer = make_optimizer(model, args.lr)
    ema = make_ema(model, decay=args.ema_decay)
    start_step, losses, wall = 0, [], 0.0
    command = "python -m ddpm_lib " + " ".join(argv)
    commands = [command]
    if args.resume:
        cfg = read_config(args.out)
        meta = cfg["meta"]
        if meta["model"] != args.model or meta["seed"] != args.seed or meta["batch_size"] != args.batch_size:
            raise SystemExit("error: --resume needs the same --model, --seed and --batch-size as the run "
                             f"(run has {meta['model']}, seed {meta['seed']}, batch {meta['batch_size']})")
        state, _ = load_checkpoint(args.out, weights="model")
        model.load_state_dict(state.state_dict())
        load_optimizer_state(args.out, optimizer)
        load_ema_state(args.out, ema, model)
        start_step, losses, wall = meta["step"], meta["losses"], meta["wall_time_s"]
        commands = meta.get("commands", []) + [command]
    if start_step >= args.steps:
        print(f"nothing to do: the run is at step {start_step} >= --steps {args.steps}")
        return 0
    t0 = time.perf_counter()
    pending = []

    def meta_for(step):
        return {
            "model": args.model, "step": step, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed, "data": data.source, "num_train_images": int(data.images.shape[0]),
            "num_timesteps": args.num_timesteps, "ema_decay": args.ema_decay, "precision": args.precision,
            "channels_last": args.channels_last, "compile": args.compile, "split_batch": args.split_batch,
            "commands": commands,
            "hardware": _hardware(device),
            "torch": torch.__version__, "wall_time_s": round(wall + time.perf_counter() - t0, 3),
            "losses": losses + [round(x, 6) for x in torch.stack(pending).tolist()] if pending else losses,
        }

    def on_step(step, loss):
        pending.append(loss)
        if step % args.checkpoint_every == 0 or step == args.steps:
            meta = meta_for(step)
            commit_run_checkpoint(args.out, step, model, args.model, ema=ema, optimizer=optimizer, meta=meta)
            losses[:] = meta["losses"]
            pending.clear()
            recent = losses[-min(100, len(losses)):]
            print(f"step {step}/{args.steps}  loss(last {len(recent)}) {sum(recent) / len(recent):.4f}  "
                  f"checkpoint {os.path.join(args.out, f'step-{step:07d}')}", flush=True)

    train(model, data.images, schedule, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
          progress=not args.no_progress, optimizer=optimizer, ema=ema, start_step=start_step, callback=on_step,
          precision=args.precision, channels_last=args.channels_last, compile=args.compile,
          split_batch=args.split_batch)
    elapsed = time.perf_counter() - t0
    done = args.steps - start_step
    print(f"trained {done} steps in {elapsed:.1f} s: {done * args.batch_size / elapsed:.1f} images/s")
    return 0


def cmd_sample(args):
    from torchvision.utils import save_image

    from .sampling import sample

    device = torch.device(args.device) if args.device else default_device()
    model, cfg = load_checkpoint(args.checkpoint, weights=args.weights, device=device)
    schedule = NoiseSchedule.linear(num_timesteps=cfg["meta"].get("num_timesteps", 1000))
    g = torch.Generator().manual_seed(args.seed)
    x = sample(model, schedule, (args.n, 1, 28, 28), generator=g, progress=not args.no_progress,
               precision=args.precision, channels_last=args.channels_last)
    save_image((x.clamp(-1, 1) + 1) / 2, args.out, nrow=args.nrow, padding=2, pad_value=1.0)
    if args.save_tensor:
        from safetensors.torch import save_file
        save_file({"samples": x.cpu().contiguous()}, args.save_tensor)
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        elif args.command == "sample":
            return cmd_sample(args)
        else:  # argparse's required subcommand makes this unreachable for valid input
            raise SystemExit(f"error: unknown command {args.command!r}")
    except ValueError as e:  # ddpm_lib's input errors: one clear line, exit status 2
        print(f"error: {e}", file=sys.stderr)
        return 2
