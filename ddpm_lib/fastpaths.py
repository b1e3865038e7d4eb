"""CPU fast paths for the same maths (book page 执行时间与性能).

Each is exact up to float rounding or bitwise (tested against the plain layer); ``sample`` uses
them on CPU, ``train`` can split the batch; both also take channels_last and bf16 (docstrings):

* ``split_batch``: run a batch as two halves on two threads, each with half the cores. Small
  tensors (7x7 and 14x14 feature maps) keep one core busy but not two; two independent
  halves do. (Measured on a 2-core machine; see the book's timings page.)
* ``fast_inference(model)``: swaps in, for the duration of a ``with`` block,
  ``ChannelFirstAttnProcessor`` (attention with 8-wide heads: one q/k/v GEMM, exp2 softmax,
  denominators from the P V GEMM), ``few_out_conv`` (1-3 output channels: GEMM + shifted adds),
  ``upsample_conv`` (nearest x2 + 3x3 conv as four 2x2 phase convolutions), ``resnet_block`` and
  ``basic_unet`` (the models' own forwards with in-place activations and additions); in a model
  with GroupNorm layers also ``conv_channels_last`` and ``group_norm``, so the activations stay
  NHWC (no oneDNN reorders around each convolution).
* ``traced(model, eps_fn)``: the forward pass replayed as a TorchScript trace (no Python between
  operations), with a check that keeps the attention's data-dependent decision exact.
"""
import contextlib
import functools
import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F


SHIFT_BOUND = 96.0 ** 2  # subtract the key maximum when max |q|^2 * max |k|^2 reaches this


class ChannelFirstAttnProcessor:
    """Self-attention of diffusers' ``Attention`` on (B, C, H, W) maps (as in ``UNet2DModel``).

    Same result as ``AttnProcessor2_0`` to float rounding: softmax(q k^T / sqrt(d)) v per head,
    kept channel-first, (B*heads, d, HW). Three things make it cheaper on a CPU:
    q, k, v come from one GEMM whose rows are ordered per head, plus a row of ones per head
    (weight 0, bias 1) so the softmax denominators come out of the ``P V`` GEMM for free;
    softmax(z) = 2^(z log2 e) / sum, with 1/sqrt(d) and log2 e folded into q's weights (PyTorch's
    exp2 is several times faster than its exp on CPU); scores are made (key, query) in ~4 MB
    chunks in one reused buffer. The key maximum is subtracted only when the bound
    |q.k| <= |q| |k| allows a score of 96 or more (in log2 units); below that, 2^score neither
    overflows nor underflows.
    A channels_last input is read as (B, HW, C) rows without a copy and the output is channels_last.
    cache_weights=True (as ``fast_inference`` uses it) builds the q/k/v weights once, not per call.
    """

    def __init__(self, cache_weights=False):
        self.cache = {} if cache_weights else None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if (hidden_states.ndim != 4 or encoder_hidden_states is not None or attention_mask is not None
                or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None):
            from diffusers.models.attention_processor import AttnProcessor2_0  # it views NCHW maps
            hidden_states = hidden_states.contiguous() if hidden_states.ndim == 4 else hidden_states
            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        B, C, H, W = hidden_states.shape
        N, heads = H * W, attn.heads
        d = C // heads
        rows = None
        if _channels_last(hidden_states):  # (B, HW, C) rows, a view; the output keeps this layout
            rows = hidden_states.permute(0, 2, 3, 1).reshape(B, N, C)
            g = attn.group_norm
            h = rows if g is None else group_norm_rows(rows, g.num_groups, g.weight, g.bias, g.eps)
            h = h.transpose(1, 2)  # (B, C, HW) with strides the GEMM reads as they are
        else:
            h = hidden_states.reshape(B, C, N)
            if attn.group_norm is not None:
                h = attn.group_norm(h)
        wb = None if self.cache is None else self.cache.get(h.dtype)
        if wb is None:
            wb = _qkv1_weights(attn, h.dtype)
            if self.cache is not None:
                self.cache[h.dtype] = wb
        w, b = wb
        R = 3 * d + 1
        qkv = torch.baddbmm(b, w.expand(B, heads * R, C), h).view(B * heads, R, N)
        q, k, v1 = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]  # v1: v and the ones row
        qk2 = qkv[:, :2 * d].square().view(B * heads, 2, d, N).sum(2).amax((0, 2))  # max |q|^2, max |k|^2
        bound = qk2.prod()
        shift = bool(bound >= SHIFT_BOUND)
        if getattr(_local, "bounds", None) is not None:  # being traced: the decision becomes a constant
            _local.bounds.append((bound, shift))
        # slices per chunk: ~4 MB of scores. The 2-core VM's L2 is 1 MB a core; 1 MB chunks were 11 %
        # faster for one 14x14 layer alone, but a whole forward measured the same (274 vs 276 ms)
        n = max(1, (1 << 22) // (4 * N * N))
        scores = qkv.new_empty(min(n, B * heads), N, N)
        out1 = qkv.new_empty(B * heads, d + 1, N)
        for kc, qc, vc, oc in zip(k.transpose(1, 2).split(n), q.split(n), v1.split(n), out1.split(n)):
            p = torch.bmm(kc, qc, out=scores if len(kc) == n else scores[:len(kc)])  # (key, query)
            if shift:
                p.sub_(p.amax(1, keepdim=True))
            torch.bmm(vc, p.exp2_(), out=oc)  # sums over keys
        out = (out1[:, :d] / out1[:, d:]).view(B, C, N)  # the softmax denominators
        proj = attn.to_out[0]
        if rows is not None:
            wt = proj.weight.t().expand(B, C, C)
            out = torch.bmm(out.transpose(1, 2), wt) if proj.bias is None else \
                torch.baddbmm(proj.bias, out.transpose(1, 2), wt)  # (B, HW, C)
            out = attn.to_out[1](out)
            if attn.residual_connection:
                out.add_(rows)
            out = out.view(B, H, W, C).permute(0, 3, 1, 2)
        else:
            out = torch.bmm(proj.weight.expand(B, C, C), out)
            if proj.bias is not None:
                out.add_(proj.bias[:, None])
            out = attn.to_out[1](out).view(B, C, H, W)
            if attn.residual_connection:
                out.add_(hidden_states)
        return out if attn.rescale_output_factor == 1 else out / attn.rescale_output_factor


def _qkv1_weights(attn, dtype):
    """(heads*(3d+1), C) weights and bias: per head q (scaled by log2(e)/sqrt(d)), k, v, ones."""
    C = attn.to_q.weight.shape[1]
    heads = attn.heads
    d = attn.to_q.weight.shape[0] // heads

    def wb(linear, scale=1.0):
        w = linear.weight.to(dtype) * scale
        b = linear.bias.to(dtype) * scale if linear.bias is not None else w.new_zeros(w.shape[0])
        return w.view(heads, d, C), b.view(heads, d)
    (wq, bq), (wk, bk), (wv, bv) = wb(attn.to_q, math.log2(math.e) / math.sqrt(d)), wb(attn.to_k), wb(attn.to_v)
    w = torch.cat([wq, wk, wv, wq.new_zeros(heads, 1, C)], 1).reshape(-1, C)
    b = torch.cat([bq, bk, bv, bq.new_ones(heads, 1)], 1).reshape(-1, 1)
    return w, b


def _channels_last(x):
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def group_norm_rows(y, groups, weight, bias, eps, out=None):
    """``GroupNorm`` of channels-last rows y (B, N, C): per image and group of C/groups channels,
    (y - mean) / sqrt(var + eps) * weight + bias. The moments come from per-channel sums of y and
    y^2 (as PyTorch's own channels-last GroupNorm kernel does), the affine map is one addcmul.
    PyTorch's kernel for this layout is several times slower than for NCHW on CPU."""
    B, N, C = y.shape
    m = max(1, (1 << 18) // (N * C))  # images per ~1 MB chunk of y*y
    if B * N * C <= 1 << 20:  # up to 4 MB: one temporary
        sq = (y * y).sum(1)
    else:  # a fresh tensor this size would cost page faults on top of the work
        sq, buf = y.new_empty(B, C), y.new_empty(m, N, C)
        for yc, sc in zip(y.split(m), sq.split(m)):
            torch.sum(torch.mul(yc, yc, out=buf if len(yc) == m else buf[:len(yc)]), 1, out=sc)
    mean, ex2 = torch.stack((y.sum(1), sq)).view(2, B, groups, -1).sum(-1).div_(N * (C // groups))
    rstd = torch.addcmul(ex2, mean, mean, value=-1).clamp_(min=0).add_(eps).rsqrt_()  # (B, groups)
    scale = rstd.unsqueeze(-1) * weight.view(groups, -1)
    shift = torch.addcmul(bias.view(groups, -1), mean.unsqueeze(-1), scale, value=-1)
    return torch.addcmul(shift.view(B, 1, C), y, scale.view(B, 1, C), out=out)


def group_norm(norm, x, inplace=False):
    """``nn.GroupNorm`` forward; a channels_last (B, C, H, W) input (at inference, no autocast)
    goes through ``group_norm_rows`` and stays channels_last, optionally written over x."""
    if not _channels_last(x) or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return type(norm).forward(norm, x)
    B, C, H, W = x.shape
    y = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
    y = group_norm_rows(y, norm.num_groups, norm.weight, norm.bias, norm.eps, out=y if inplace else None)
    return y.view(B, H, W, C).permute(0, 3, 1, 2)


def conv_channels_last(conv, weight_cl, x):
    """``conv(x)`` with the weight in channels_last order, so oneDNN reads and writes NHWC and the
    output stays channels_last: no reorder of the activations to and from oneDNN's blocked layout
    around every convolution (ONEDNN_VERBOSE=1 showed ~28 ms of them in a ~290 ms, 32-image
    UNet2DModel forward on one CPU thread)."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return type(conv).forward(conv, x)
    out = F.conv2d(x, weight_cl, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if out.is_contiguous(memory_format=torch.channels_last):
        return out
    return out.contiguous(memory_format=torch.channels_last)  # a 1-channel input gives NCHW


def few_out_conv(conv, x):
    """``conv(x)`` for an ``nn.Conv2d`` with few output channels, k x k kernel, stride 1, 'same'
    zero padding (the last layer of both models): one GEMM gives every (tap, output channel)
    map, then k*k shifted adds sum them. oneDNN runs a 1-output-channel convolution at a small
    fraction of its usual speed; this is the same sum in another order (float rounding)."""
    B, C, H, W = x.shape
    k, O = conv.kernel_size[0], conv.out_channels
    p = k // 2
    taps = conv.weight.permute(2, 3, 0, 1).reshape(k * k * O, C)  # rows (ky, kx, o)
    x = x.contiguous()  # a channels_last input: one copy is cheaper than the GEMM in NHWC
    m = torch.bmm(taps.expand(B, -1, -1), x.view(B, C, H * W)).view(B, k * k, O, H, W)
    out = m.new_zeros(B, O, H, W) if conv.bias is None else \
        conv.bias.to(m.dtype).view(1, O, 1, 1).repeat(B, 1, H, W)
    for i in range(k):  # out[y, x] += m_tap[y + i - p, x + j - p] where that lies inside the map
        for j in range(k):
            dy, dx = i - p, j - p
            out[:, :, max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)] += \
                m[:, i * k + j, :, max(0, dy):H - max(0, -dy), max(0, dx):W - max(0, -dx)]
    return out


# nearest x2 then a 3-tap 'same' filter, seen from one output phase a: two taps on the small map
_PHASE_TAPS = torch.tensor([[[1., 0, 0], [0, 1, 1]], [[1., 1, 0], [0, 0, 1]]])  # (a, tap, kernel row)
# the same as one stride-2 transposed convolution with 4 taps (output row 2i - 1 + m gets tap m of x[i])
_TRANSPOSED_TAPS = torch.tensor([[0., 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])  # (m, kernel row)


def upsample_conv(up, x, output_size=None, *args, **kwargs):
    """diffusers ``Upsample2D`` (nearest x2, then a 3x3 'same' convolution) computed on the small
    map: output pixel (2i+a, 2j+b) sees only rows i-1+a, i+a and columns j-1+b, j+b of x, so each
    of the four phases (a, b) is a 2x2 convolution with summed weights. One convolution with
    4x the output channels, no upsampled tensor, about 4/9 of the multiply-adds. A channels_last
    input runs the four phases as one stride-2 transposed convolution with a 4x4 kernel (oneDNN
    writes the interleaved NHWC output itself)."""
    B, C, H, W = x.shape
    if output_size is not None and tuple(output_size) != (2 * H, 2 * W):
        return type(up).forward(up, x, output_size, *args, **kwargs)
    conv = up.conv
    O = conv.out_channels
    if _channels_last(x):
        r = _TRANSPOSED_TAPS.to(conv.weight)
        k = torch.einsum("my,nx,ocyx->comn", r, r, conv.weight).contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(x, k, conv.bias, stride=2, padding=1)
    r = _PHASE_TAPS.to(conv.weight)
    k = torch.einsum("aiy,bjx,ocyx->abocij", r, r, conv.weight).reshape(4 * O, C, 2, 2)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    z = F.conv2d(x, k, bias, padding=1).view(B, 2, 2, O, H + 1, W + 1)
    out = z.new_empty(B, O, H, 2, W, 2)
    for a in range(2):
        for b in range(2):
            out[:, :, :, a, :, b] = z[:, a, b, :, a:a + H, b:b + W]
    return out.view(B, O, 2 * H, 2 * W)


def _upsample_conv_ok(m):
    if type(m).__name__ != "Upsample2D" or not getattr(m, "use_conv", False):
        return False
    c = getattr(m, "conv", None)
    return (not m.use_conv_transpose and m.interpolate and m.norm is None and type(c) is torch.nn.Conv2d
            and c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1)
            and c.dilation == (1, 1) and c.groups == 1 and c.padding_mode == "zeros")


def resnet_block(block, x, temb, *args, **kwargs):
    """diffusers ``ResnetBlock2D.forward`` at inference with its activations and additions done
    in place (same operations, same order: bitwise the same result, five fewer fresh tensors;
    under ``fast_inference`` norm2 also normalises its channels_last input in place)."""
    if block.training or torch.is_autocast_enabled("cpu"):  # dropout / mixed dtypes: the original
        return type(block).forward(block, x, temb, *args, **kwargs)
    h = block.conv1(F.silu(block.norm1(x), inplace=True))
    if block.time_emb_proj is not None and temb is not None:
        h += block.time_emb_proj(temb if block.skip_time_act else F.silu(temb))[:, :, None, None]
    if type(block.norm2) is torch.nn.GroupNorm and "forward" in block.norm2.__dict__:
        h = group_norm(block.norm2, h, inplace=True)  # h is this block's own: normalised in place
    else:
        h = block.norm2(h)
    h = block.conv2(F.silu(h, inplace=True))
    h += x if block.conv_shortcut is None else block.conv_shortcut(x)
    return h if block.output_scale_factor == 1 else h.div_(block.output_scale_factor)


def _resnet_ok(m):
    return (type(m).__name__ == "ResnetBlock2D" and m.upsample is None and m.downsample is None
            and m.time_embedding_norm == "default" and type(m.nonlinearity) is torch.nn.SiLU)


def basic_unet(model, x, t=None):
    """``BasicUNet`` / ``BasicUNetFixed`` forward at inference, the same layers in the same order,
    with activations in place and each "upsample, then add the skip" done as one in-place add
    into the skip tensor (nearest x2 is a broadcast). Bitwise the model's own result."""
    from .models import BasicUNetFixed
    if model.training or torch.is_grad_enabled():
        return type(model).forward(model, x) if t is None else type(model).forward(model, x, t)
    fixed = isinstance(model, BasicUNetFixed)
    if fixed:
        t_plane = (t.to(x.dtype) / model.num_timesteps).reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        x = torch.cat([x, t_plane], dim=1)
    h = []
    for i, layer in enumerate(model.down_layers):
        x = F.silu(layer(x), inplace=True)
        if i < 2:
            h.append(x)
            x = model.downscale(x)
    last = len(model.up_layers) - 1
    for i, layer in enumerate(model.up_layers):
        if i > 0:
            skip = h.pop()
            B, C, H, W = skip.shape
            skip.view(B, C, H // 2, 2, W // 2, 2).add_(x[:, :, :, None, :, None])  # skip + upscale(x)
            x = skip
        x = layer(x)
        if i < last or not fixed:
            x = F.silu(x, inplace=True)
    return x


def _basic_ok(m):
    from .models import BasicUNet, BasicUNetFixed
    return (type(m) in (BasicUNet, BasicUNetFixed) and type(m.act) is torch.nn.SiLU and type(m.downscale) is torch.nn.MaxPool2d
            and type(m.upscale) is torch.nn.Upsample and m.upscale.scale_factor in (2, 2.0)
            and m.upscale.mode == "nearest")


def _few_out_ok(m):
    if type(m) is not torch.nn.Conv2d:
        return False
    k = m.kernel_size
    return (m.out_channels <= 3 and k[0] == k[1] and k[0] % 2 == 1
            and m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1
            and m.padding == (k[0] // 2, k[0] // 2) and m.padding_mode == "zeros")


@contextlib.contextmanager
def fast_inference(model):
    """Within the block, the model's diffusers ``Attention`` layers run ``ChannelFirstAttnProcessor``
    and its eligible layers run ``few_out_conv`` (Conv2d, 1-3 outputs), ``upsample_conv``
    (Upsample2D), ``resnet_block`` (ResnetBlock2D) and ``basic_unet`` (BasicUNet, BasicUNetFixed).
    A model with GroupNorm layers (UNet2DModel) also runs channels_last inside: its other Conv2d
    layers run ``conv_channels_last`` and its GroupNorm layers ``group_norm``, so activations stay
    NHWC from the first convolution to the last. Weights are read once, on entry (channels_last
    copies, the merged q/k/v weights): change them only outside the block. The model's own
    processors and forwards (and its weights, untouched) come back afterwards."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    attns = [m for m in modules if hasattr(m, "set_processor") and hasattr(m, "processor")]
    free = [m for m in modules if "forward" not in m.__dict__]
    convs = [m for m in free if _few_out_ok(m)]
    ups = [m for m in free if _upsample_conv_ok(m)]
    resnets = [m for m in free if _resnet_ok(m)]
    basics = [m for m in free if _basic_ok(m)]
    norms = [m for m in free if type(m) is torch.nn.GroupNorm and m.affine]
    nhwc = [m for m in free if norms and _conv_cl_ok(m) and m not in convs]
    saved = [m.processor for m in attns]
    for m in attns:
        m.processor = ChannelFirstAttnProcessor(cache_weights=True)
    for m in convs:
        m.forward = functools.partial(few_out_conv, m)
    for m in ups:
        m.forward = functools.partial(upsample_conv, m)
    for m in resnets:
        m.forward = functools.partial(resnet_block, m)
    for m in basics:
        m.forward = functools.partial(basic_unet, m)
    for m in norms:
        m.forward = functools.partial(group_norm, m)
    for m in nhwc:
        w = m.weight.detach().contiguous(memory_format=torch.channels_last)
        m.forward = functools.partial(conv_channels_last, m, w)
    try:
        yield model
    finally:
        for m, proc in zip(attns, saved):
            m.processor = proc
        for m in convs + ups + resnets + basics + norms + nhwc:
            del m.forward


class _Denoiser(torch.nn.Module):  # holds the model, so the trace reads its parameters as attributes
    def __init__(self, model, eps_fn):
        super().__init__()
        self.model, self.eps_fn = model, eps_fn

    def forward(self, x, t):
        eps = self.eps_fn(x, t)
        bounds = [b for b, _ in _local.bounds]
        return eps, torch.stack(bounds) if bounds else eps.new_zeros(0)


_TRACEABLE_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "ChannelFirstAttnProcessor")


def traceable(model):
    """True for the book's models, whose forwards branch on shapes and settings, never on values,
    so a trace replays them exactly: ``BasicUNet``, ``BasicUNetFixed`` and diffusers'
    ``UNet2DModel`` with its stock attention processors (or ours); not a subclass, not a model
    with forward hooks (a replay would skip them)."""
    from .models import BasicUNet, BasicUNetFixed
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False
    if type(model) in (BasicUNet, BasicUNetFixed):
        return True
    return (type(model).__name__ == "UNet2DModel" and type(model).__module__.startswith("diffusers.")
            and all(type(m.processor).__name__ in _TRACEABLE_PROCESSORS for m in model.modules()
                    if hasattr(m, "processor")))


def traced(model, eps_fn):
    """eps_fn(x, t), the model's noise prediction, replayed as a TorchScript trace: one trace per
    input shape, made on the first call of that shape, then run by TorchScript's optimising
    executor with no Python between the operations. ``sample`` uses it on CPU for ``traceable``
    models. Sampling 64 images with UNet2DModel on 2 cores (split batch, ``fast_inference``): a
    step's forward passes took 272 ms traced against 297 ms eager (medians of 6 alternated
    60-step runs); the first step, which traces, took 1.6-1.8 s instead of 0.3 s, and its memory
    peaked higher: 187 MiB above the start against 52 MiB for an eager forward (32 images, one
    thread; a 3-step, 64-image sampling run: 370 against 129 MiB).

    The trace fixes every Python decision taken while tracing. The shapes are fixed by the key;
    ``ChannelFirstAttnProcessor``'s decision to subtract the key maximum is data-dependent, so the
    trace also returns each attention layer's bound, and a call where a layer would now decide
    otherwise is run again eagerly. Same operations in the same order: the same result as eps_fn
    (tested bitwise). ``torch.jit.trace`` is deprecated in PyTorch 2.x (its FutureWarning is
    silenced here); if tracing fails, eps_fn runs eagerly."""
    traces = {}

    def run(x, t):
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype)
        if key not in traces:
            with _trace_lock:  # one trace per shape; warning filters are process-wide
                if key not in traces:
                    traces[key] = _trace(model, eps_fn, x, t)
        if traces[key] is None:  # tracing failed
            return eps_fn(x, t)
        graph, shifted = traces[key]
        eps, bounds = graph(x, t)
        if bool(((bounds >= SHIFT_BOUND) > shifted).any()):  # a layer now needs the max subtracted
            return eps_fn(x, t)
        return eps
    run.traces = traces  # shape key -> (trace, its decisions), or None where tracing failed
    return run


_trace_lock = threading.Lock()


def _trace(model, eps_fn, x, t):
    _local.bounds = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation FutureWarning; TracerWarnings on the decisions
            graph = torch.jit.trace(_Denoiser(model, eps_fn), (x, t), check_trace=False)
        return graph, torch.tensor([s for _, s in _local.bounds], dtype=torch.bool)
    except Exception:  # not traceable: run eagerly
        return None
    finally:
        _local.bounds = None


def _conv_cl_ok(m):
    return type(m) is torch.nn.Conv2d and m.padding_mode == "zeros" and isinstance(m.padding, tuple)


@contextlib.contextmanager
def threads_per_part(parts=2):
    """Intra-op threads divided among the parts (2 cores: one each); restored afterwards.

    Inside the block, ``split_batch`` runs its other parts on ``parts - 1`` worker threads kept
    for the whole block. A fresh thread per call starts from cold per-thread state every step
    (forward passes alone: 20,700 against 9,000 page faults a step): on 2 cores, sampling
    UNet2DModel with 64 images took 297 ms a step that way against 290 ms with a kept thread
    (medians of 4 alternated runs).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(max(1, n // parts))
    outer = getattr(_local, "pool", None)
    _local.pool = pool = ThreadPoolExecutor(max(1, parts - 1), thread_name_prefix="ddpm_lib-part")
    try:
        yield
    finally:
        pool.shutdown()
        _local.pool = outer
        torch.set_num_threads(n)


_local = threading.local()  # the worker threads of the caller's innermost threads_per_part block


def split_batch(fn, *tensors, parts=2):
    """Return [fn(*halves_0), fn(*halves_1), ...]: part 0 on the caller's thread, the others on
    worker threads (those of the enclosing ``threads_per_part()`` block, else fresh ones).

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
    pool = getattr(_local, "pool", None)
    with contextlib.nullcontext(pool) if pool is not None else ThreadPoolExecutor(max(1, parts - 1)) as workers:
        futures = [workers.submit(work, i) for i in range(1, parts)]
        work(0)
        for f in futures:
            f.result()
    if errors:
        raise errors[0]
    return out
