"""Checkpoints. A checkpoint is a folder: ``model.safetensors``, optionally ``ema.safetensors``
(the averaged weights) and ``training_state.pt`` (the optimizer's and the EMA's ``state_dict()``,
read with ``torch.load(weights_only=True)``), and ``config.json`` (model, provenance, each
file's sha256). A run folder holds ``step-NNNNNNN/`` checkpoints and a ``latest`` file naming
the newest; files are written whole, then renamed, so a killed run keeps its last checkpoint.
"""
import hashlib
import json
import os
import shutil

import torch

from .models import BasicUNetFixed, build_model
from .validation import check_choice

FORMAT = "ddpm_lib-checkpoint-1"
WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
REDO = "the checkpoint is damaged or incomplete: export or train it again"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(path, text):
    """Write a text file whole, then rename it into place."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def save_checkpoint(path, model, model_name, ema=None, optimizer=None, meta=None):
    """Write a checkpoint folder at ``path``; returns path. model_name: a ``models.MODEL_NAMES``
    name; ema: a ``make_ema`` average; meta: a JSON-able dict."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    files = {"model.safetensors": model.state_dict()}
    if ema is not None:  # the averaged parameters, by name
        files["ema.safetensors"] = dict(zip([n for n, _ in model.named_parameters()], ema.shadow_params))
    if optimizer is not None:
        files["training_state.pt"] = {"optimizer": optimizer.state_dict(),
                                      "ema": None if ema is None else ema.state_dict()}
    config = {"format": FORMAT, "model": model_name, "meta": meta or {}, "sha256": {}}
    if isinstance(model, BasicUNetFixed):
        config["model_kwargs"] = {"num_timesteps": model.num_timesteps}
    if model_name == "unet2d-small":  # its make_small_unet2d arguments, read back from diffusers
        c = model.config
        config["model_kwargs"] = {"block_out_channels": list(c.block_out_channels),
                                  "layers_per_block": c.layers_per_block, "attention": c.add_attention,
                                  "norm_num_groups": c.norm_num_groups, "in_channels": c.in_channels}
        if c.num_class_embeds is not None:  # class-conditional (chapter 9)
            config["model_kwargs"]["num_classes"] = c.num_class_embeds - 1
    for fname, obj in files.items():
        target = os.path.join(path, fname)
        if fname.endswith(".pt"):
            torch.save(obj, target + ".tmp")
        else:
            save_file({k: v.detach().cpu().contiguous() for k, v in obj.items()}, target + ".tmp")
        os.replace(target + ".tmp", target)  # whole files only: write, then rename
        config["sha256"][fname] = sha256_file(target)
    write_text(os.path.join(path, "config.json"), json.dumps(config, indent=2, ensure_ascii=False))
    return path


def resolve_checkpoint(path):
    """A checkpoint folder: ``path`` itself, or the one a run folder's ``latest`` names."""
    latest = os.path.join(os.fspath(path), "latest")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8") as f:
            name = f.read().strip()
        if not os.path.isfile(os.path.join(path, name, "config.json")):
            raise ValueError(f"{latest} names {name!r}, which holds no config.json: "
                             "delete the latest file to start the run again")
        return os.path.join(os.fspath(path), name)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise ValueError(f"no checkpoint at {path!r} (no config.json and no 'latest' file)")


def read_config(path):
    """The checkpoint's config.json as a dict (``path`` as for :func:`resolve_checkpoint`)."""
    file = os.path.join(resolve_checkpoint(path), "config.json")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as e:  # a JSONDecodeError or a UnicodeDecodeError
        raise ValueError(f"{file} is not valid JSON ({e}): {REDO}") from None
    keys = ("format", "model", "meta", "sha256")
    missing = [k for k in keys if k not in config] if isinstance(config, dict) else list(keys)
    if missing or config["format"] != FORMAT:
        raise ValueError(f"{file} is not a {FORMAT} config (missing: {missing}): {REDO}")
    return config


def checked_file(path, fname):
    """The path of ``fname`` in a checkpoint, after checking its sha256 against config.json."""
    path = resolve_checkpoint(path)
    target, expected = os.path.join(path, fname), read_config(path)["sha256"].get(fname)
    if expected is None:
        raise ValueError(f"checkpoint {path!r} has no {fname}")
    if not os.path.isfile(target):
        raise ValueError(f"{target} is missing: {REDO}")
    if sha256_file(target) != expected:
        raise ValueError(f"sha256 mismatch for {target}: the file is corrupt or was changed; {REDO}")
    return target


def load_tensors(path, name):
    from safetensors.torch import load_file  # sha256-checked

    return load_file(checked_file(path, f"{name}.safetensors"))


def load_checkpoint(path, weights="ema", device="cpu"):
    """Rebuild the model of a checkpoint and load its weights; returns (model, config).

    weights: "ema" (the averaged weights; the raw ones if none were saved) or "model".
    The model is returned on ``device`` in eval mode.
    """
    check_choice(weights, "weights", ("ema", "model"))
    config = read_config(path)
    model = build_model(config["model"], **config.get("model_kwargs", {}))
    state = load_tensors(path, "model")
    if weights == "ema" and "ema.safetensors" in config["sha256"]:
        state.update(load_tensors(path, "ema"))  # EMA holds the parameters; buffers come from "model"
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the weights in {resolve_checkpoint(path)!r} do not fit a "
                         f"{config['model']!r} model ({e}): {REDO}") from None
    return model.to(device).eval(), config


def load_training_state(path, optimizer, ema=None):
    """Restore the optimizer (and the EMA) saved by ``save_checkpoint(optimizer=...)``."""
    state = torch.load(checked_file(path, "training_state.pt"), weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])


def commit_run_checkpoint(run_dir, step, model, model_name, keep=2, **kwargs):
    """Save ``run_dir/step-NNNNNNN`` (kwargs as for save_checkpoint), then point
    ``run_dir/latest`` at it atomically and delete all but the newest ``keep`` (0: keep all)."""
    name = f"step-{step:07d}"
    save_checkpoint(os.path.join(run_dir, name), model, model_name, **kwargs)
    write_text(os.path.join(run_dir, "latest"), name + "\n")
    old = sorted(d for d in os.listdir(run_dir) if d.startswith("step-") and d != name)
    for d in old[:max(0, len(old) - (keep - 1))] if keep else []:
        shutil.rmtree(os.path.join(run_dir, d), ignore_errors=True)
    return os.path.join(run_dir, name)


PRETRAINED = ("unet2d", "basic-fixed", "cpu-recipe", "cpu-cfg", "cpu-labels")


def pretrained(name, device="cpu"):
    """A shipped model: "unet2d" (seed config), "basic-fixed", "cpu-recipe" (chapter 8's
    v-predicting unet2d-small: sample it with its config's meta, as the CLI does), "cpu-labels"
    (the same given the labels, chapter 8) or "cpu-cfg" (chapter 9's). Checks the weights' sha256
    against config.json and MANIFEST.json; returns the model in eval mode."""
    check_choice(name, "name", PRETRAINED)
    path, file = os.path.join(WEIGHTS_DIR, name), os.path.join(WEIGHTS_DIR, "MANIFEST.json")
    with open(file, encoding="utf-8") as f:
        expected = json.load(f)[name]["sha256"]
    if sha256_file(checked_file(path, "model.safetensors")) != expected:
        raise ValueError(f"sha256 of the shipped {name} weights does not match {file}: reinstall")
    return load_checkpoint(path, device=device)[0]


def pretrained_samples(name):
    """The shipped model's 256 samples, (256, 1, 28, 28): 32 batches of 8, batch k drawn with
    torch.Generator().manual_seed(k) (tests/test_pretrained.py replays them on a CPU); cpu-cfg's and
    cpu-labels' batch k shows the digits (8k + i) mod 10 at its config's guidance_scale."""
    from safetensors.torch import load_file

    check_choice(name, "name", PRETRAINED)
    return load_file(os.path.join(WEIGHTS_DIR, "samples.safetensors"))[name]
