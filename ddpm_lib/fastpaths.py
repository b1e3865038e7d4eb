"""CPU fast paths for the same maths (book page 执行时间与性能).

Two levers, both exact up to float rounding (tested against the plain path); ``train`` and
``sample`` also take channels_last and bf16 (see their docstrings):

* ``ChannelFirstAttnProcessor``: the attention of ``UNet2DModel`` with its 8-wide heads,
  computed as three GEMMs laid out so none has an 8-wide output (PyTorch's CPU flash kernel
  and the usual ``P @ V`` are slow at that shape).
* ``split_batch``: run a batch as two halves on two threads, each with half the cores. Small
  tensors (7x7 and 14x14 feature maps) keep one core busy but not two; two independent
  halves do. (Measured on a 2-core machine; see the book's timings page.)
"""
import contextlib
import threading

import torch


class ChannelFirstAttnProcessor:
    """Self-attention of diffusers' ``Attention`` on (B, C, H, W) maps (as in ``UNet2DModel``).

    Same result as ``AttnProcessor2_0`` to float rounding: softmax(q k^T / sqrt(d)) v per head,
    with q, k, v, the output projection and the residual kept channel-first, (B*heads, d, HW).
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if (hidden_states.ndim != 4 or encoder_hidden_states is not None or attention_mask is not None
                or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None):
            from diffusers.models.attention_processor import AttnProcessor2_0
            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        residual = hidden_states
        B, C, H, W = hidden_states.shape
        h = hidden_states.reshape(B, C, H * W)
        if attn.group_norm is not None:
            h = attn.group_norm(h)

        def proj(linear, x):  # linear layer applied along C of (B, C, N)
            y = torch.matmul(linear.weight, x)
            return y if linear.bias is None else y + linear.bias[:, None]
        heads, d = attn.heads, C // attn.heads
        q = proj(attn.to_q, h).reshape(B * heads, d, H * W)
        k = proj(attn.to_k, h).reshape(B * heads, d, H * W)
        v = proj(attn.to_v, h).reshape(B * heads, d, H * W)
        q = q * d ** -0.5
        n = max(1, (1 << 20) // (4 * (H * W) ** 2))  # slices per chunk: ~1 MB of scores stays in cache
        out = []
        for i in range(0, B * heads, n):
            p = torch.bmm(q[i:i + n].transpose(1, 2), k[i:i + n]).softmax(-1)  # (query, key)
            out.append(torch.bmm(v[i:i + n], p.transpose(1, 2)))  # sum over keys, channel-first
        out = torch.cat(out).reshape(B, C, H * W)
        out = attn.to_out[1](proj(attn.to_out[0], out)).reshape(B, C, H, W)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def fast_attention(model):
    """Within the block, every diffusers ``Attention`` in the model runs
    ``ChannelFirstAttnProcessor``; its own processors come back afterwards."""
    layers = [m for m in model.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")] \
        if isinstance(model, torch.nn.Module) else []
    saved = [m.processor for m in layers]
    for m in layers:
        m.processor = ChannelFirstAttnProcessor()
    try:
        yield model
    finally:
        for m, proc in zip(layers, saved):
            m.processor = proc


@contextlib.contextmanager
def threads_per_part(parts=2):
    """Intra-op threads divided among the parts (2 cores: one each); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(max(1, n // parts))
    try:
        yield
    finally:
        torch.set_num_threads(n)


def split_batch(fn, *tensors, parts=2):
    """Return [fn(*halves_0), fn(*halves_1), ...]: each part of the batch on its own thread.

    Thread-local state (grad mode, inference mode, autocast) is copied into each thread.
    Call inside ``threads_per_part()`` so the parts do not fight over the intra-op pool.
    """
    B = tensors[0].shape[0]
    bounds = [B * i // parts for i in range(parts + 1)]
    chunks = [[x[bounds[i]:bounds[i + 1]] for x in tensors] for i in range(parts)]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu")
    out, errors = [None] * parts, []

    def work(i):
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                    torch.autocast("cpu", dtype=dtype, enabled=autocast):
                out[i] = fn(*chunks[i])
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, parts)]
    for th in threads:
        th.start()
    work(0)
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return out
