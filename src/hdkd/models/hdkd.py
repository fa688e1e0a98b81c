"""HDKD models: the MBCSA CNN teacher and the hybrid CNN + DFLT student (EL-Assiouti et al., 2024).

Teacher and student share the shapes of their three convolutional stages, which is what lets the student's stage
maps be matched to the teacher's with a plain MSE. Architecture details follow `HDKD_SPEC.md` (the authors' code);
parameter names are our own and `hdkd.models.checkpoint` maps the authors' names onto them.

Registered with timm: `hdkd_teacher`, `hdkd_student` (class token only) and `hdkd` (class + distillation token).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

__all__ = ["HDKDNet", "CBAM", "MBCSA", "MBConv", "StemBlock", "DFLTBlock"]


# --------------------------------------------------------------------------------------------------------- blocks
class StemBlock(nn.Module):
    """Conv3x3 (no bias) -> BN -> GELU: the blocks of stage 1."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ChannelAttention(nn.Module):
    """CBAM channel attention: one shared bottleneck MLP applied to the average- and max-pooled descriptors."""

    def __init__(self, chs: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(chs, chs // reduction, 1, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(chs // reduction, chs, 1, bias=False)

    def forward(self, x):
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)])  # both through one MLP call
        avg, mx = self.fc2(self.act(self.fc1(pooled))).chunk(2)
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Module):
    """Channel then spatial attention, with a residual around the whole module (as in the authors' code)."""

    def __init__(self, chs: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(chs, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x):
        return self.spatial(self.channel(x)) + x


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


class MBCSA(nn.Module):
    """Pre-norm inverted bottleneck with CBAM; the stride sits on the expanding 1x1 conv."""

    def __init__(self, in_chs: int, out_chs: int, downsample: bool = False, expansion: int = 4, attn: str = "cbam"):
        super().__init__()
        hidden = in_chs * expansion
        stride = 2 if downsample else 1
        if not downsample and in_chs != out_chs:
            raise ValueError(f"a block that keeps the resolution must keep the width ({in_chs} != {out_chs})")
        self.pool = nn.MaxPool2d(3, 2, 1) if downsample else None
        self.proj = nn.Conv2d(in_chs, out_chs, 1, bias=False) if downsample else None
        self.pre_norm = nn.BatchNorm2d(in_chs)
        self.conv_expand = nn.Conv2d(in_chs, hidden, 1, stride, bias=False)
        self.bn_expand = nn.BatchNorm2d(hidden)
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.attn = CBAM(hidden) if attn == "cbam" else SqueezeExcite(hidden, int(in_chs * 0.25))
        self.conv_project = nn.Conv2d(hidden, out_chs, 1, bias=False)
        self.bn_project = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(self.pool(x))
        x = self.act(self.bn_expand(self.conv_expand(self.pre_norm(x))))
        x = self.act(self.bn_dw(self.conv_dw(x)))
        x = self.bn_project(self.conv_project(self.attn(x)))
        return shortcut + x


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
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        return self.norm_out(self.proj(self.norm_in(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=False)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the authors' softmax attention
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

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


# ---------------------------------------------------------------------------------------------------------- model
class HDKDNet(nn.Module):
    """Three convolutional stages, then either the teacher's pooled MLP head or the DFLT transformer head.

    head="linear": teacher (avg pool, Linear(C3 -> 128), Linear(128 -> classes)).
    head="dflt": student; with `distilled=True` a distillation token and head are added (the `hdkd` model), which
    returns (cls_logits, dist_logits) in training mode and their average in eval mode.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: Union[int, Sequence[int]] = 224,
        depths: Sequence[int] = (2, 2, 3),
        widths: Sequence[int] = (64, 96, 192),
        block: str = "mbcsa",
        stem_stride: int = 2,
        head: str = "dflt",
        distilled: bool = False,
        hidden_dim: int = 128,
        embed_dim: int = 256,
        dflt_depth: int = 3,
        dflt_heads: int = 8,
        dflt_head_dim: int = 32,
        dflt_mlp_dim: int = 1024,
        dflt_patch_size: int = 2,
        global_pool: str = "token",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if isinstance(img_size, (tuple, list)):
            img_size = img_size[-1]
        if len(depths) != 3 or len(widths) != 3 or min(depths) < 1:
            raise ValueError(f"depths and widths need 3 stages each with depth >= 1, got {depths}, {widths}")
        if block not in ("mbcsa", "mbconv"):
            raise ValueError(f"block must be 'mbcsa' or 'mbconv', got {block!r}")
        if head not in ("linear", "dflt"):
            raise ValueError(f"head must be 'linear' or 'dflt', got {head!r}")
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        reduction = stem_stride * 4 * (dflt_patch_size if head == "dflt" else 1)
        if img_size % reduction:
            raise ValueError(
                f"img_size {img_size} must be a multiple of {reduction} for this configuration "
                f"(stem stride {stem_stride}, stages 2 and 3 halve it"
                + (f", patch size {dflt_patch_size})" if head == "dflt" else ")")
            )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.head_type = head
        self.distilled = distilled and head == "dflt"
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

        if head == "linear":
            self.head_hidden = nn.Linear(widths[-1], hidden_dim)
            self.head_hidden_size = hidden_dim
            self.head = nn.Linear(hidden_dim, num_classes) if num_classes > 0 else nn.Identity()
        else:
            grid = img_size // reduction
            self.num_prefix_tokens = 2 if self.distilled else 1
            self.patch_embed = PatchEmbed(widths[-1], embed_dim, dflt_patch_size)
            self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
            self.dist_token = nn.Parameter(torch.randn(1, 1, embed_dim)) if self.distilled else None
            self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + self.num_prefix_tokens, embed_dim))
            self.blocks = nn.Sequential(
                *[DFLTBlock(embed_dim, dflt_heads, dflt_head_dim, dflt_mlp_dim) for _ in range(dflt_depth)]
            )
            self.norm = nn.LayerNorm(embed_dim)
            self.num_features = self.head_hidden_size = embed_dim
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
            self.head_dist = (
                (nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()) if self.distilled else None
            )
        self.distilled_training = True  # train mode returns both logits (what the distillation loss needs)
        self.supports_return_stages = True

    # ----------------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def no_weight_decay(self):
        return {"cls_token", "dist_token", "pos_embed"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        make = (lambda: nn.Linear(self.head_hidden_size, num_classes)) if num_classes > 0 else nn.Identity
        self.head = make()
        if self.head_type == "dflt" and self.distilled:
            self.head_dist = make()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def forward_stages(self, x) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
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
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return self._forward_tail(x), intermediates

    def _forward_tail(self, x):
        """From the stage-3 map to the features forward_head consumes."""
        if self.head_type == "linear":
            return x
        x = self.patch_embed(x)
        tokens = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.distilled:
            tokens.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat(tokens + [x], dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.norm(x)

    def forward_features(self, x):
        return self._forward_tail(self.stages(x))

    def forward_head(self, x, pre_logits: bool = False):
        if self.head_type == "linear":
            x = self.head_hidden(x.mean((2, 3)))
            return x if pre_logits else self.head(x)
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2 if self.distilled else x[:, 0]
        logits = self.head(x[:, 0])
        if not self.distilled:
            return logits
        logits_dist = self.head_dist(x[:, 1])
        if self.training and self.distilled_training and not torch.jit.is_scripting():
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x, return_stages: bool = False):
        """Logits; with `return_stages`, (logits, [stage maps]) from the same pass: what distillation needs,
        through `forward` so that wrappers such as DistributedDataParallel see the call."""
        if return_stages:
            maps = self.forward_stages(x)
            return self.forward_head(self._forward_tail(maps[-1])), maps
        return self.forward_head(self.forward_features(x))


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


def _create(variant: str, pretrained: bool, defaults: dict, **kwargs) -> HDKDNet:
    kwargs = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}  # None means "the default"
    return build_model_with_cfg(
        HDKDNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2), feature_cls="getter", flatten_sequential=True),
        **kwargs,
    )


@register_model
def hdkd_teacher(pretrained: bool = False, **kwargs) -> HDKDNet:
    """The MBCSA CNN teacher: stages of 6, 6, 9 blocks and a two-layer linear head."""
    return _create("hdkd_teacher", pretrained, dict(depths=(6, 6, 9), head="linear"), **kwargs)


@register_model
def hdkd_student(pretrained: bool = False, **kwargs) -> HDKDNet:
    """The hybrid student trained alone: stages of 2, 2, 3 blocks and the DFLT with a class token."""
    return _create("hdkd_student", pretrained, dict(depths=(2, 2, 3), head="dflt"), **kwargs)


@register_model
def hdkd(pretrained: bool = False, **kwargs) -> HDKDNet:
    """The HDKD student: the hybrid student with a distillation token and head."""
    return _create("hdkd", pretrained, dict(depths=(2, 2, 3), head="dflt", distilled=True), **kwargs)
