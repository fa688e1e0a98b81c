"""HDKD models: the MBCSA CNN teacher and the hybrid CNN + DFLT student (EL-Assiouti et al., 2024).

Teacher and student share the shapes of their three convolutional stages, which is what lets the student's stage
maps be matched to the teacher's with a plain MSE. Architecture details follow `HDKD_SPEC.md` (the authors' code);
parameter names are our own and `hdkd.models.checkpoint` maps the authors' names onto them.

Classes: `HDKDNet` (the three stages, shared), `HDKDTeacher` (pooled two-layer linear head), `HDKDStudent` (DFLT
with a class token) and `HDKDDistilled` (DFLT with class and distillation tokens). Registered with timm:
`hdkd_teacher`, `hdkd_student` and `hdkd`.

Speed (one CPU thread is the case users meet on laptops): every layer computes exactly the authors' function, but
some are written so that PyTorch stays on its fast kernels in both memory formats (NCHW and channels_last):
unstrided 1x1 convs stay on oneDNN where PyTorch would send them to its slow NCHW-only convolution
(`PointwiseConv`), CBAM's bottleneck MLP on pooled 1x1 descriptors is `F.linear` on the conv weights, the shortcut's
3x3 max pool runs on the channels_last kernel, CBAM's max pools compute indices only when autograd needs them
(`channel_max`, `spatial_max`), and the patch embedding reads a channels_last map without a copy. The models run
fastest in channels_last (`model.to(memory_format=torch.channels_last)`), which
`hdkd.evaluation.inference.prepare_for_inference` uses.

A frozen model (eval mode, no autograd, fp32 on the CPU) runs its stages in channels_last, each convolution with
its BatchNorms folded in on the call and its GELU as oneDNN's post-op (`fused_conv`): the same function without the
separate passes that BN and GELU cost in eager mode. Training, autograd (Grad-CAM), tracing and compiling see the
modules as written.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from hdkd.config import spatial_reduction
from hdkd.models.fuse import (
    Fusable,
    can_fold_after,
    can_fold_before,
    fold_bn_after,
    fold_bn_before,
    folded_conv_params,
)
from hdkd.runtime import cpu_vendor

__all__ = [
    "HDKDNet",
    "HDKDTeacher",
    "HDKDStudent",
    "HDKDDistilled",
    "CBAM",
    "MBCSA",
    "MBConv",
    "StemBlock",
    "DFLTBlock",
    "PointwiseConv",
    "Linear",
]


# ------------------------------------------------------------------------------------------------ fast primitives
def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also NCHW, as 1-channel or 1x1 maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _conv_leaves_onednn(x: torch.Tensor) -> bool:
    """Where PyTorch runs an unstrided 1x1 conv on its slow NCHW-only kernel (`aten::_slow_conv2d_forward`) instead
    of oneDNN: fp32 on the CPU, fewer than 16 images, one thread (`use_mkldnn` in ATen's Convolution.cpp). Not while
    tracing, exporting or compiling: those see a plain convolution (ONNX has no oneDNN operator)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] < 16
        and torch.get_num_threads() == 1
        and not torch.is_autocast_enabled("cpu")
    )


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """An unstrided 1x1 convolution as one matrix product, in (and returned in) the input's memory format."""
    w = weight.flatten(1)
    if is_channels_last(x):
        return F.linear(x.permute(0, 2, 3, 1), w, bias).permute(0, 3, 1, 2)
    b, _, h, wd = x.shape
    y = torch.matmul(w, x.flatten(2))
    if bias is not None:
        y = y + bias[:, None]
    return y.view(b, -1, h, wd)


def _linear_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where an fp32 CPU linear map over many rows (the DFLT's tokens) is faster on oneDNN than on PyTorch's BLAS:
    ATen sends fp32 `F.linear` to MKL's GEMM, which on AMD CPUs runs its AVX2 code even where AVX-512 is there (about
    100 against oneDNN's 208 GFLOP/s on one Zen 5 thread, docs/RESULTS.md section 13); on Intel CPUs MKL is the
    faster one (1.13-1.17 x at batch 1, level in training, one thread), so not there. Not for a few rows (the heads,
    CBAM's pooled descriptors: oneDNN's call overhead dominates), under autocast (bf16 linears already run on oneDNN),
    or while tracing, exporting or compiling (those see a plain linear)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    return (
        not _MKL_IS_NATIVE
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() >= _ONEDNN_LINEAR_MIN_ROWS * x.shape[-1]
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
    )


_ONEDNN_LINEAR_MIN_ROWS = 16
_MKL_IS_NATIVE = cpu_vendor() == "GenuineIntel"


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` as oneDNN's 1x1 convolution on a channels_last (1, C, rows, 1) view of the rows:
    the same product, no copy of a contiguous input or of the output, gradients through ATen's convolution."""
    in_features, out_features = x.shape[-1], weight.shape[0]
    rows = x.reshape(1, -1, 1, in_features).permute(0, 3, 1, 2)  # NHWC memory = the (rows, C) matrix
    y = torch.mkldnn_convolution(rows, weight.view(out_features, in_features, 1, 1), bias, (0, 0), (1, 1), (1, 1), 1)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)


def onednn_linear_with_grad(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`F.linear` as a 1x1 convolution on a channels_last (n, C, rows / n, 1) view with n >= 16 dividing the rows:
    at a batch of 16 or more ATen runs the convolution and its backward on oneDNN (with the batch-1 view of
    `onednn_linear`, the backward falls to ATen's slow 1x1 kernel). 1.5-1.8 x faster forward plus backward than
    either at the training step's shapes on one Zen 5 thread (192-816 rows; docs/RESULTS.md section 13)."""
    in_features, out_features = x.shape[-1], weight.shape[0]
    rows = x.numel() // in_features
    n = next((d for d in range(16, min(rows, 64) + 1) if rows % d == 0), None)
    if n is None:  # fewer than 16 rows, or no divisor in 16-64 (a short search on the hot path): the batch-1 view
        return onednn_linear(x, weight, bias)
    view = x.reshape(n, rows // n, 1, in_features).permute(0, 3, 1, 2)
    y = F.conv2d(view, weight.view(out_features, in_features, 1, 1), bias)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)


_ONEDNN_BACKWARD_MIN_ROWS = 128  # below it (e.g. 51 rows, one image at 224 px) the batch-1 view was faster


class Linear(nn.Linear):
    """nn.Linear (its parameters, initialisation and state-dict keys) whose fp32 CPU product over many rows runs on
    oneDNN (see `_linear_on_onednn`), forward and, over enough rows, backward."""

    def forward(self, x):
        if _linear_on_onednn(x, self.weight):
            rows = x.numel() // x.shape[-1]
            if (
                torch.is_grad_enabled()
                and rows >= _ONEDNN_BACKWARD_MIN_ROWS
                and (x.requires_grad or self.weight.requires_grad)
            ):
                return onednn_linear_with_grad(x, self.weight, self.bias)
            return onednn_linear(x, self.weight, self.bias)
        return super().forward(x)


class PointwiseConv(nn.Conv2d):
    """An unstrided 1x1 Conv2d (its parameters, initialisation and state-dict keys) kept on oneDNN where PyTorch's
    dispatcher would send it to the slow kernel (see `_conv_leaves_onednn`): oneDNN's convolution is several times
    faster there than the slow kernel or a matrix product (measured at batch 1, one thread, in both layouts)."""

    def __init__(self, in_chs: int, out_chs: int, bias: bool = False):
        super().__init__(in_chs, out_chs, 1, bias=bias)

    def forward(self, x):
        if _conv_leaves_onednn(x):
            if torch.backends.mkldnn.is_available():
                return torch.mkldnn_convolution(x, self.weight, self.bias, (0, 0), (1, 1), (1, 1), 1)
            return pointwise(x, self.weight, self.bias)
        return super().forward(x)


def _frozen_on_onednn(x: torch.Tensor, block: nn.Module) -> bool:
    """Where a block in eval mode runs each conv with its BatchNorms folded in on the fly and its GELU as oneDNN's
    post-op (`fused_conv`): fp32 or bf16 autocast on the CPU with no autograd (the BNs' running statistics in use,
    every BN able to fold). Not while tracing, exporting or compiling (those see the plain modules, and compile
    fuses on its own)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    return (
        not block.training
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and (
            _cpu_bf16_autocast() and onednn_supports(torch.bfloat16)
            if torch.is_autocast_enabled("cpu")
            else x.dtype == torch.float32 and onednn_supports(torch.float32)
        )
        and _ONEDNN_POINTWISE is not None
        and all(m.running_mean is not None for m in block.modules() if isinstance(m, nn.BatchNorm2d))
    )


_ONEDNN_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)  # oneDNN conv + post-op (ATen)
# oneDNN's bf16 convolution needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; elsewhere (e.g. AVX2-only Zen 3) it raises,
# so bf16 autocast keeps the plain modules there
_BF16_CHECK = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
_ONEDNN_BF16 = bool(_BF16_CHECK is not None and _BF16_CHECK())


def onednn_supports(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN convolutions (and so `onednn_linear`) run in ``dtype``: fp32 always, bf16 only
    with the instructions `_ONEDNN_BF16` checks."""
    if not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _ONEDNN_BF16)


def _cpu_bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def fused_conv(
    x: torch.Tensor, conv: nn.Conv2d, after: nn.Module, before: Optional[nn.Module] = None, gelu: bool = False
) -> torch.Tensor:
    """before -> conv -> after (eval-mode BatchNorms or Identity) -> optional exact GELU, as one oneDNN convolution
    with the BNs folded into its weights on this call: the same function as the modules in sequence (within float
    rounding), without the separate passes over the map that the BNs and the GELU cost in eager mode (GELU alone was
    2.3 x slower than the convolution it follows, 1x1 conv 96 -> 384 at 56 x 56, one Intel thread)."""
    weight, bias = folded_conv_params(conv, after, before)
    if _cpu_bf16_autocast():  # what autocast does for a convolution: bf16 operands, a bf16 result
        x, weight = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        bias = None if bias is None else bias.to(torch.bfloat16)
    if is_channels_last(x):  # a weight in the other layout would be reordered by oneDNN on every call anyway
        weight = weight.contiguous(memory_format=torch.channels_last)
    return _ONEDNN_POINTWISE(
        x,
        weight,
        bias,
        conv.padding,
        conv.stride,
        conv.dilation,
        conv.groups,
        "gelu" if gelu else "none",
        [],
        "none" if gelu else "",
    )


class GELU(nn.GELU):
    """nn.GELU that applies itself to a channels_last map through its NHWC view: the same function, but PyTorch's
    GELU on a channels_last tensor takes a slower path (forward 2.6 x, forward plus backward 1.6 x, bf16 2.3 x slower
    than on the same memory viewed as a contiguous NHWC tensor, 384 x 56 x 56 maps, one Intel thread)."""

    def forward(self, x):
        if is_channels_last(x):
            return F.gelu(x.permute(0, 2, 3, 1), approximate=self.approximate).permute(0, 3, 1, 2)
        return super().forward(x)


def _needs_grad(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over channels, (B, 1, H, W), as a sum divided afterwards: the same values as `mean`, but its backward
    hands back a broadcast view of the small gradient, where mean's divides a full-size copy, in NCHW order even for
    a channels_last input (which then made every later backward op mix layouts: CBAM's forward plus backward was
    1.5 x slower in channels_last at 56 x 56, batch 16, one Zen 5 thread; docs/RESULTS.md section 13)."""
    return x.sum(1, keepdim=True) / x.shape[1]


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Global average pool, (B, C), as a sum divided afterwards (see `channel_mean`)."""
    return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


class _ChannelMax(torch.autograd.Function):
    """torch.max over channels with the gradient routed to the arg-max, as torch.max's own backward does, but
    scattered into a zero tensor of the input's layout: torch.max's backward scatters into an NCHW one, so in
    channels_last every gradient summed with it mixed layouts (such an add was 12 x slower in bf16, 3.7 x in fp32,
    than one of matching layouts, 32 x 384 x 16 x 16, one Intel thread)."""

    @staticmethod
    def forward(ctx, x):
        values, index = x.max(1, keepdim=True)
        ctx.save_for_backward(index)
        ctx.shape, ctx.channels_last = x.shape, is_channels_last(x)
        return values

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        zeros = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=layout).zero_()
        return zeros.scatter_(1, index, grad)


def channel_max(x: torch.Tensor) -> torch.Tensor:
    """Max over channels, (B, 1, H, W). amax is the fast forward, but its backward (mask, tie count, divide) is
    several times slower than max-with-indices, which also routes a tie's gradient to one input as the authors'
    torch.max does; so the indices are computed only when a gradient will need them (`_ChannelMax`)."""
    return _ChannelMax.apply(x) if _needs_grad(x) else x.amax(1, keepdim=True)


def spatial_max(x: torch.Tensor) -> torch.Tensor:
    """Global max pool, (B, C): amax without autograd, adaptive_max_pool2d (indices, the authors' pooling) with."""
    return F.adaptive_max_pool2d(x, 1).flatten(1) if _needs_grad(x) else x.amax((2, 3))


class MaxPoolDown(nn.Module):
    """MaxPool(3, stride 2, padding 1) on PyTorch's channels_last CPU kernel, which is many times faster than the
    NCHW one (forward and backward); an NCHW input comes back NCHW."""

    def forward(self, x):
        if is_channels_last(x) or x.device.type != "cpu":
            return F.max_pool2d(x, 3, 2, 1)
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, 1).contiguous()


@contextmanager
def _running_stats_kept(module: nn.Module):
    """A checkpoint's recomputation normalises with the batch statistics as the first pass did, but must not update
    the BatchNorms' running statistics a second time: momentum 0 keeps them bit for bit, the counter is restored."""
    bns = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def checkpoint_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) with its activations recomputed in the backward pass (torch.utils.checkpoint, non-reentrant)."""
    return checkpoint(module, x, use_reentrant=False, context_fn=lambda: (nullcontext(), _running_stats_kept(module)))


# --------------------------------------------------------------------------------------------------------- blocks
class StemBlock(nn.Module, Fusable):
    """Conv3x3 (no bias) -> BN -> GELU: the blocks of stage 1."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = GELU()

    def forward(self, x):
        if _frozen_on_onednn(x, self):
            return fused_conv(x, self.conv, self.bn, gelu=True)
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if can_fold_after(self.conv, self.bn):
            fold_bn_after(self.conv, self.bn)
            self.bn = nn.Identity()


class ChannelAttention(nn.Module):
    """CBAM channel attention: one shared bottleneck MLP applied to the average- and max-pooled descriptors.

    fc1/fc2 are 1x1 Conv2d parameters (the authors' 4-D weights, as stored); on 1x1 pooled descriptors they are
    plain linear maps, so they are computed with F.linear on a 2-D view of the weights (a 1x1 conv on a 1x1 map
    would run on PyTorch's slow convolution kernel)."""

    def __init__(self, chs: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(chs, chs // reduction, 1, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(chs // reduction, chs, 1, bias=False)

    def forward(self, x):
        pooled = torch.cat([spatial_mean(x), spatial_max(x)])  # (2B, C): both descriptors through one MLP call
        hidden = self.act(F.linear(pooled, self.fc1.weight.flatten(1), self.fc1.bias))
        avg, mx = F.linear(hidden, self.fc2.weight.flatten(1), self.fc2.bias).chunk(2)
        return x * torch.sigmoid(avg + mx)[:, :, None, None]


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def gate(self, x):
        """The (B, 1, H, W) attention map that multiplies x."""
        desc = torch.cat([channel_mean(x), channel_max(x)], dim=1)
        if is_channels_last(x):  # the 2-channel map in the layout of the model's weights (cat makes it NCHW)
            desc = desc.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(self.conv(desc))

    def forward(self, x):
        return x * self.gate(x)


class CBAM(nn.Module):
    """Channel then spatial attention, with a residual around the whole module (as in the authors' code)."""

    def __init__(self, chs: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(chs, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x):
        refined = self.channel(x)
        return torch.addcmul(x, refined, self.spatial.gate(refined))  # spatial(refined) + x in one pass


class SqueezeExcite(nn.Module):
    """MBConv's SE; its bottleneck width comes from the block's *input* channels (spec section 1)."""

    def __init__(self, chs: int, rd_chs: int):
        super().__init__()
        self.fc1 = nn.Linear(chs, rd_chs, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(rd_chs, chs, bias=False)

    def forward(self, x):
        scale = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3))))))
        return x * scale[:, :, None, None]


class MBCSA(nn.Module, Fusable):
    """Pre-norm inverted bottleneck with CBAM; the stride sits on the expanding 1x1 conv."""

    def __init__(self, in_chs: int, out_chs: int, downsample: bool = False, expansion: int = 4, attn: str = "cbam"):
        super().__init__()
        hidden = in_chs * expansion
        if not downsample and in_chs != out_chs:
            raise ValueError(f"a block that keeps the resolution must keep the width ({in_chs} != {out_chs})")
        self.pool = MaxPoolDown() if downsample else None
        self.proj = PointwiseConv(in_chs, out_chs) if downsample else None
        self.pre_norm = nn.BatchNorm2d(in_chs)
        # a strided 1x1 conv stays on oneDNN; an unstrided one is a PointwiseConv
        self.conv_expand = nn.Conv2d(in_chs, hidden, 1, 2, bias=False) if downsample else PointwiseConv(in_chs, hidden)
        self.bn_expand = nn.BatchNorm2d(hidden)
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.act = GELU()
        self.attn = CBAM(hidden) if attn == "cbam" else SqueezeExcite(hidden, int(in_chs * 0.25))
        self.conv_project = PointwiseConv(hidden, out_chs)
        self.bn_project = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(self.pool(x))
        if _frozen_on_onednn(x, self):
            x = fused_conv(x, self.conv_expand, self.bn_expand, before=self.pre_norm, gelu=True)
            x = fused_conv(x, self.conv_dw, self.bn_dw, gelu=True)
            return shortcut + fused_conv(self.attn(x), self.conv_project, self.bn_project)
        x = self.act(self.bn_expand(self.conv_expand(self.pre_norm(x))))
        x = self.act(self.bn_dw(self.conv_dw(x)))
        x = self.bn_project(self.conv_project(self.attn(x)))
        return shortcut + x

    def fuse(self) -> None:
        """Fold the pre-norm into conv_expand (exact: a 1x1 conv reads no padding), then each conv's BN."""
        if can_fold_before(self.pre_norm, self.conv_expand):
            fold_bn_before(self.pre_norm, self.conv_expand)
            self.pre_norm = nn.Identity()
        for conv_name, bn_name in (("conv_expand", "bn_expand"), ("conv_dw", "bn_dw"), ("conv_project", "bn_project")):
            conv, bn = getattr(self, conv_name), getattr(self, bn_name)
            if can_fold_after(conv, bn):
                fold_bn_after(conv, bn)
                setattr(self, bn_name, nn.Identity())


def MBConv(in_chs: int, out_chs: int, downsample: bool = False, expansion: int = 4) -> MBCSA:
    """The ablation baseline: MBCSA with squeeze-excitation in place of CBAM."""
    return MBCSA(in_chs, out_chs, downsample, expansion, attn="se")


class PatchEmbed(nn.Module):
    """2x2 patches flattened in (row, column, channel) order, channel fastest -> LN -> Linear -> LN."""

    def __init__(self, in_chs: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        patch_dim = in_chs * patch_size * patch_size
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = Linear(patch_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch_size
        # NHWC first: a view for a channels_last map, then one copy into (patch row, patch col, row, col, channel)
        x = x.permute(0, 2, 3, 1).reshape(b, h // p, p, w // p, p, c).transpose(2, 3)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        return self.norm_out(self.proj(self.norm_in(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = Linear(dim, inner * 3, bias=False)
        self.proj = Linear(inner, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            x = softmax_attention(q, k, v)
        else:
            x = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the authors' softmax attention
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out: what SDPA computes, for CPU autocast, where PyTorch's fused bf16 CPU
    kernel was 2-7 x slower forward plus backward at the DFLT's few tokens (6-198 per image, one Zen 5 thread)."""
    return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DFLTBlock(nn.Module):
    """x + Attn(LN(x)), then x + FFN(x): the authors' FFN has no LayerNorm in front of it."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, head_dim)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


# --------------------------------------------------------------------------------------------------------- models
def _layout_of(stage_map: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A stage map handed back in the memory format of the model's input (see `HDKDNet._frozen_layout`)."""
    if is_channels_last(stage_map) and inputs.dim() == 4 and not is_channels_last(inputs):
        return stage_map.contiguous()
    return stage_map


def _check_global_pool(global_pool: Optional[str], allowed: str, model: str) -> str:
    if global_pool is None or global_pool == allowed:
        return allowed
    raise ValueError(f"global_pool {global_pool!r}: {model} pools with {allowed!r} only (the authors' head)")


class HDKDNet(nn.Module):
    """The three convolutional stages that teacher and students share (stem blocks, then MBCSA or MBConv stages);
    subclasses add the head. `forward(x, return_stages=True)` gives (logits, [stage maps]) from one pass."""

    head_type = ""  # "linear" (teacher) or "dflt" (students)
    distilled = False
    supports_return_stages = True  # the distillation criterion calls forward(x, return_stages=True)

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: Union[int, Sequence[int]] = 224,
        depths: Sequence[int] = (2, 2, 3),
        widths: Sequence[int] = (64, 96, 192),
        block: str = "mbcsa",
        stem_stride: int = 2,
        drop_rate: float = 0.0,
        patch_size: int = 1,
    ):
        super().__init__()
        if isinstance(img_size, (tuple, list)):
            img_size = img_size[-1]
        if len(depths) != 3 or len(widths) != 3 or min(depths) < 1:
            raise ValueError(f"depths and widths need 3 stages each with depth >= 1, got {depths}, {widths}")
        if block not in ("mbcsa", "mbconv"):
            raise ValueError(f"block must be 'mbcsa' or 'mbconv', got {block!r}")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.reduction = spatial_reduction(stem_stride, patch_size)
        if img_size % self.reduction:
            raise ValueError(
                f"img_size {img_size} must be a multiple of {self.reduction} for this configuration "
                f"(stem stride {stem_stride}, stages 2 and 3 halve it"
                + (f", patch size {patch_size})" if patch_size > 1 else ")")
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        make_block = MBCSA if block == "mbcsa" else MBConv
        stem = [StemBlock(in_chans, widths[0], stem_stride)]
        stem += [StemBlock(widths[0], widths[0]) for _ in range(depths[0] - 1)]
        stages = [nn.Sequential(*stem)]
        for i in (1, 2):
            blocks = [make_block(widths[i - 1], widths[i], downsample=True)]
            blocks += [make_block(widths[i], widths[i]) for _ in range(depths[i] - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=widths[i], reduction=stem_stride * 2**i, module=f"stages.{i}") for i in range(3)
        ]
        self.head_drop = nn.Dropout(drop_rate)  # before the classifier(s), as timm's drop_rate

    # ----------------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def _new_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.global_pool = _check_global_pool(global_pool, self.global_pool, type(self).__name__)
        self.num_classes = num_classes
        self.head = self._new_classifier(num_classes)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each stage (and each DFLT block) in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint_module(module, x)
        return module(x)

    def _frozen_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A frozen model on oneDNN runs in channels_last whatever its input's layout (the fused convolutions were
        1.2 x faster on channels_last maps); the 3-channel input is the only copy."""
        if x.dim() == 4 and not is_channels_last(x) and _frozen_on_onednn(x, self):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_stages(self, x) -> list[torch.Tensor]:
        x = self._frozen_layout(x)
        maps = []
        for stage in self.stages:
            x = self._run(stage, x)
            maps.append(x)
        return maps

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage maps (the features HDKD distils) and, unless `intermediates_only`, the final features."""
        if output_fmt != "NCHW":
            raise ValueError("only output_fmt='NCHW' is supported")
        take, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        stages = self.stages[: max_index + 1] if (stop_early or intermediates_only) else self.stages
        inputs, x = x, self._frozen_layout(x)
        for i, stage in enumerate(stages):
            x = self._run(stage, x)
            if i in take:
                intermediates.append(_layout_of(x, inputs))
        if intermediates_only:
            return intermediates
        return self._forward_tail(x), intermediates

    def _forward_tail(self, x: torch.Tensor) -> torch.Tensor:
        """From the stage-3 map to the features forward_head consumes."""
        return x

    def forward_features(self, x):
        return self._forward_tail(self.forward_stages(x)[-1])

    def forward_head(self, x, pre_logits: bool = False):
        raise NotImplementedError

    def forward(self, x, return_stages: bool = False):
        """Logits; with `return_stages`, (logits, [stage maps]) from the same pass: what distillation needs,
        through `forward` so that wrappers such as DistributedDataParallel see the call."""
        maps = self.forward_stages(x)
        logits = self.forward_head(self._forward_tail(maps[-1]))
        return (logits, [_layout_of(m, x) for m in maps]) if return_stages else logits


class HDKDTeacher(HDKDNet):
    """The CNN teacher: the stages, global average pool, Linear(C3 -> hidden_dim), Linear(hidden_dim -> classes)."""

    head_type = "linear"

    def __init__(self, num_classes: int = 1000, hidden_dim: int = 128, global_pool: Optional[str] = None, **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)
        self.global_pool = _check_global_pool(global_pool, "avg", type(self).__name__)
        self.head_hidden = nn.Linear(self.num_features, hidden_dim)
        self.head_hidden_size = hidden_dim
        self.head = self._new_classifier(num_classes)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(self.head_hidden(x.mean((2, 3))))
        return x if pre_logits else self.head(x)


class HDKDStudent(HDKDNet):
    """The hybrid student: the stages, then the DFLT (2x2 patch embedding, class token, transformer layers, final
    LayerNorm) and a linear head on the class token."""

    head_type = "dflt"
    num_prefix_tokens = 1

    def __init__(
        self,
        num_classes: int = 1000,
        embed_dim: int = 256,
        dflt_depth: int = 3,
        dflt_heads: int = 8,
        dflt_head_dim: int = 32,
        dflt_mlp_dim: int = 1024,
        dflt_patch_size: int = 2,
        global_pool: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, patch_size=dflt_patch_size, **kwargs)
        self.global_pool = _check_global_pool(global_pool, "token", type(self).__name__)
        grid = self.img_size // self.reduction
        self.patch_embed = PatchEmbed(self.num_features, embed_dim, dflt_patch_size)
        self._make_prefix_tokens(embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + self.num_prefix_tokens, embed_dim))
        self.blocks = nn.Sequential(
            *[DFLTBlock(embed_dim, dflt_heads, dflt_head_dim, dflt_mlp_dim) for _ in range(dflt_depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.num_features = self.head_hidden_size = embed_dim
        self._make_heads(num_classes)

    def _make_prefix_tokens(self, embed_dim: int) -> None:
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        return [self.cls_token.expand(batch, -1, -1)]

    def _make_heads(self, num_classes: int) -> None:
        self.head = self._new_classifier(num_classes)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.global_pool = _check_global_pool(global_pool, self.global_pool, type(self).__name__)
        self.num_classes = num_classes
        self._make_heads(num_classes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def _forward_tail(self, x):
        x = self.patch_embed(x)
        x = torch.cat(self._prefix_tokens(x.shape[0]) + [x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = self._run(block, x)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)


class HDKDDistilled(HDKDStudent):
    """The HDKD student: a distillation token after the class token and a second head on it; in training mode
    it returns (class logits, distillation logits), in eval mode their average."""

    distilled = True
    num_prefix_tokens = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.distilled_training = True  # train mode returns both logits (what the distillation loss needs)

    def _make_prefix_tokens(self, embed_dim: int) -> None:
        super()._make_prefix_tokens(embed_dim)
        self.dist_token = nn.Parameter(torch.randn(1, 1, embed_dim))

    def _prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        return super()._prefix_tokens(batch) + [self.dist_token.expand(batch, -1, -1)]

    def _make_heads(self, num_classes: int) -> None:
        super()._make_heads(num_classes)
        self.head_dist = self._new_classifier(num_classes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    def forward_head(self, x, pre_logits: bool = False):
        cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (cls + dist) / 2
        logits, logits_dist = self.head(cls), self.head_dist(dist)
        if self.training and self.distilled_training and not torch.jit.is_scripting():
            return logits, logits_dist
        return (logits + logits_dist) / 2


# ------------------------------------------------------------------------------------------ registered constructors
def _cfg(**kwargs):
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.0.conv",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "hdkd_teacher.untrained": _cfg(fixed_input_size=False),
        "hdkd_student.untrained": _cfg(),
        "hdkd.untrained": _cfg(classifier=("head", "head_dist")),
    }
)

# One set of architecture arguments describes a teacher and its students (the trainer passes the DFLT settings to
# every HDKD model, and checkpoints store them): each model drops the arguments of the parts it does not have.
_DFLT_ARGS = ("embed_dim", "dflt_depth", "dflt_heads", "dflt_head_dim", "dflt_mlp_dim", "dflt_patch_size")
_TEACHER_HEAD_ARGS = ("hidden_dim",)


def _create(cls: type, variant: str, pretrained: bool, defaults: dict, **kwargs) -> HDKDNet:
    kwargs = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}  # None means "the default"
    head, distilled = kwargs.pop("head", cls.head_type), kwargs.pop("distilled", cls.distilled)
    if head != cls.head_type or bool(distilled) != cls.distilled:
        raise ValueError(
            f"{variant}: head={head!r}, distilled={distilled!r} describe another model; this one has "
            f"head={cls.head_type!r}, distilled={cls.distilled} (use hdkd_teacher, hdkd_student or hdkd)"
        )
    absent = _DFLT_ARGS if cls is HDKDTeacher else _TEACHER_HEAD_ARGS
    kwargs = {k: v for k, v in kwargs.items() if k not in absent}
    return build_model_with_cfg(
        cls,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2), feature_cls="getter", flatten_sequential=True),
        **kwargs,
    )


@register_model
def hdkd_teacher(pretrained: bool = False, **kwargs) -> HDKDTeacher:
    """The MBCSA CNN teacher: stages of 6, 6, 9 blocks and a two-layer linear head."""
    return _create(HDKDTeacher, "hdkd_teacher", pretrained, dict(depths=(6, 6, 9)), **kwargs)


@register_model
def hdkd_student(pretrained: bool = False, **kwargs) -> HDKDStudent:
    """The hybrid student trained alone: stages of 2, 2, 3 blocks and the DFLT with a class token."""
    return _create(HDKDStudent, "hdkd_student", pretrained, dict(depths=(2, 2, 3)), **kwargs)


@register_model
def hdkd(pretrained: bool = False, **kwargs) -> HDKDDistilled:
    """The HDKD student: the hybrid student with a distillation token and head."""
    return _create(HDKDDistilled, "hdkd", pretrained, dict(depths=(2, 2, 3)), **kwargs)
