"""Checkpoints as safetensors plus a JSON of config and sha256 — nothing is ever unpickled.

A checkpoint is a folder: ``model.safetensors``, optionally ``ema.safetensors`` and
``optimizer.safetensors``, and ``config.json`` (model name and kwargs, the files' sha256,
free-form metadata). A training run folder holds ``step-NNNNNNN/`` checkpoints and a
``latest`` file naming the newest; it is replaced atomically (write, then rename).
"""
import hashlib
import json
import os
import shutil

import torch

from .models import BasicUNetFixed, build_model

FORMAT = "ddpm_lib-checkpoint-1"


def sha256_file(path):
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _optimizer_to_tensors(optimizer):
    # AdamW state {param_index: {"step", "exp_avg", "exp_avg_sq"}} -> flat {"i.key": tensor}
    sd = optimizer.state_dict()
    tensors = {}
    for i, state in sd["state"].items():
        for k, v in state.items():
            tensors[f"{i}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def _optimizer_from_tensors(tensors, param_groups):
    state = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": param_groups}


def _atomic_write_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path, model, model_name, ema=None, optimizer=None, meta=None):
    """Write a checkpoint folder at ``path`` (created; existing files replaced).

    model_name: "basic" | "basic-fixed" | "unet2d"; ema: a diffusers EMAModel; meta: JSON-able dict.
    """
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    files = {"model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}
    if ema is not None:
        names = [n for n, _ in model.named_parameters()]
        files["ema"] = {n: p.detach().cpu().contiguous() for n, p in zip(names, ema.shadow_params)}
    config = {"format": FORMAT, "model": model_name, "meta": meta or {}, "sha256": {}}
    if isinstance(model, BasicUNetFixed):
        config["model_kwargs"] = {"num_timesteps": model.num_timesteps}
    if ema is not None:
        config["ema"] = {"decay": ema.decay, "optimization_step": ema.optimization_step}
    if optimizer is not None:
        files["optimizer"], config["optimizer_param_groups"] = _optimizer_to_tensors(optimizer)
    for name, tensors in files.items():
        target = os.path.join(path, f"{name}.safetensors")
        save_file(tensors, target + ".tmp")
        os.replace(target + ".tmp", target)
        config["sha256"][f"{name}.safetensors"] = sha256_file(target)
    _atomic_write_json(config, os.path.join(path, "config.json"))
    return path


def resolve_checkpoint(path):
    """A checkpoint folder: ``path`` itself, or the one a run folder's ``latest`` names."""
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8") as f:
            return os.path.join(path, f.read().strip())
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise ValueError(f"no checkpoint at {path!r} (no config.json and no 'latest' file)")


def read_config(path):
    """The checkpoint's config.json as a dict."""
    with open(os.path.join(resolve_checkpoint(path), "config.json"), encoding="utf-8") as f:
        return json.load(f)


def load_tensors(path, name, verify=True):
    """Load ``name``.safetensors from a checkpoint, checking its sha256 against config.json."""
    from safetensors.torch import load_file

    path = resolve_checkpoint(path)
    config = read_config(path)
    fname = f"{name}.safetensors"
    target = os.path.join(path, fname)
    if fname not in config["sha256"]:
        raise ValueError(f"checkpoint {path!r} has no {fname}")
    if verify and sha256_file(target) != config["sha256"][fname]:
        raise ValueError(f"sha256 mismatch for {target!r}: the file is corrupt or was changed")
    return load_file(target)


def load_checkpoint(path, weights="ema", device="cpu"):
    """Rebuild the model of a checkpoint and load its weights; returns (model, config).

    weights: "ema" (falls back to "model" if no EMA was saved) or "model". The model is in eval mode.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    config = read_config(path)
    if config.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} checkpoint: {path!r}")
    model = build_model(config["model"], **config.get("model_kwargs", {}))
    state = load_tensors(path, "model")
    if weights == "ema" and "ema.safetensors" in config["sha256"]:
        state.update(load_tensors(path, "ema"))  # EMA holds the parameters; buffers come from "model"
    model.load_state_dict(state)
    return model.to(device).eval(), config


def load_optimizer_state(path, optimizer):
    """Restore an optimizer saved by save_checkpoint(optimizer=...)."""
    config = read_config(path)
    tensors = load_tensors(path, "optimizer")
    optimizer.load_state_dict(_optimizer_from_tensors(tensors, config["optimizer_param_groups"]))


def load_ema_state(path, ema, model):
    """Restore a diffusers EMAModel saved by save_checkpoint(ema=...); model gives the parameter order."""
    config = read_config(path)
    tensors = load_tensors(path, "ema")
    names = [n for n, _ in model.named_parameters()]
    ema.shadow_params = [tensors[n].to(p.device) for n, p in zip(names, ema.shadow_params)]
    ema.optimization_step = config["ema"]["optimization_step"]


def commit_run_checkpoint(run_dir, step, model, model_name, ema=None, optimizer=None, meta=None, keep=2):
    """Save ``run_dir/step-NNNNNNN`` then point ``run_dir/latest`` at it atomically; prune old ones."""
    name = f"step-{step:07d}"
    save_checkpoint(os.path.join(run_dir, name), model, model_name, ema=ema, optimizer=optimizer, meta=meta)
    tmp = os.path.join(run_dir, "latest.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(run_dir, "latest"))
    old = sorted(d for d in os.listdir(run_dir) if d.startswith("step-") and d != name)
    for d in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(run_dir, d), ignore_errors=True)
    return os.path.join(run_dir, name)


def export_weights(run_or_checkpoint, out_dir, weights="ema"):
    """Write a compact, shippable checkpoint: the (EMA) weights as ``model.safetensors`` plus a
    config.json carrying the training run's metadata. Returns out_dir."""
    model, config = load_checkpoint(run_or_checkpoint, weights=weights)
    meta = dict(config["meta"])
    meta["weights"] = "ema" if weights == "ema" and "ema.safetensors" in config["sha256"] else "model"
    return save_checkpoint(out_dir, model, config["model"], meta=meta)


WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")


def pretrained(name, device="cpu"):
    """A shipped model: "unet2d" (seed config) or "basic-fixed". Checks the sha256 of the weights
    against config.json and MANIFEST.json; returns the model in eval mode."""
    with open(os.path.join(WEIGHTS_DIR, "MANIFEST.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    models = {k: v for k, v in manifest.items() if k in ("unet2d", "basic-fixed")}
    if name not in models:
        raise ValueError(f"name must be one of {', '.join(models)}, got {name!r}")
    path = os.path.join(WEIGHTS_DIR, name)
    if sha256_file(os.path.join(path, "model.safetensors")) != models[name]["sha256"]:
        raise ValueError(f"sha256 of the shipped {name} weights does not match MANIFEST.json")
    model, _ = load_checkpoint(path, device=device)
    return model


def pretrained_samples(name):
    """The 256 samples the shipped model drew on the GPU (32 batches of 8; batch k from
    torch.Generator().manual_seed(k), fp32): (256, 1, 28, 28). A CPU run of any batch
    reproduces them (tests/test_pretrained.py); they spare readers minutes of CPU sampling."""
    from safetensors.torch import load_file

    if name not in ("unet2d", "basic-fixed"):
        raise ValueError(f"name must be 'unet2d' or 'basic-fixed', got {name!r}")
    return load_file(os.path.join(WEIGHTS_DIR, "samples.safetensors"))[name]
