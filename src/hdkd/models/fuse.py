"""BatchNorm folding for frozen (inference-only) models, e.g. the teacher during distillation.

In eval mode a BatchNorm2d is a per-channel affine map, y = a * x + b with a = gamma / sqrt(var + eps) and
b = beta - mean * a (running statistics). When it directly follows a Conv2d, it folds into the conv exactly:
W' = a[:, None, None, None] * W and bias' = a * bias + b. `fold_batchnorm` does this for

- every `Fusable` block, which folds its own BNs in `fuse()` (the HDKD blocks: `StemBlock` conv -> bn; `MBCSA` /
  `MBConv` conv_expand -> bn_expand, conv_dw -> bn_dw, conv_project -> bn_project, and its pre-norm);
- any `nn.Sequential` in which a Conv2d is immediately followed by a BatchNorm2d (generic, e.g. other models).

MBCSA's `pre_norm` is a BatchNorm that *precedes* conv_expand. A BN in front of a conv can be
folded into it exactly only when the conv never sees padding (padding adds zeros *after* the BN, which a folded
bias would wrongly shift): conv_expand is a 1x1 conv with no padding, so
conv(a * x + b) = (W * a[None, :, None, None]) x + (W b) + bias holds at every output position, whatever the
stride (a stride only subsamples positions). The pre-norm only feeds the residual branch (the shortcut takes the
raw input), so folding it into conv_expand changes nothing else. It is folded first, then bn_expand on top.

Folded BNs are replaced with `nn.Identity`, so module names of the convs stay the same (forward_intermediates and
stage indexing work unchanged). The arithmetic is done in float64 and cast back to the conv's dtype.

The result is an inference artifact: it is returned in eval mode with gradients off. Putting it in train mode does
NOT restore batch statistics (the BNs are gone); use the original model for that.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn

__all__ = [
    "Fusable",
    "fold_batchnorm",
    "count_batchnorms",
    "can_fold_after",
    "can_fold_before",
    "fold_bn_after",
    "fold_bn_before",
    "folded_conv_params",
]


class Fusable:
    """A block that folds its own eval-mode BatchNorms into its convs, in place, with `fuse()` (folded BNs become
    nn.Identity so module names stay); `fold_batchnorm` calls it on a copy of the model."""

    def fuse(self) -> None:
        raise NotImplementedError


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) in float64 such that eval-mode bn(x) == a * x + b per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    var = bn.running_var.detach().double()
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach().double()
    b = -bn.running_mean.detach().double() * a
    if bn.bias is not None:
        b = b + bn.bias.detach().double()
    return a, b


def _set_weight_bias(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """New frozen weight and bias in the conv's dtype and the old weight's memory format (a channels_last model
    stays channels_last: a conv whose weight and input layouts differ reorders the weight on every call)."""
    old = conv.weight
    fmt = torch.channels_last if old.dim() == 4 and not old.is_contiguous() else torch.contiguous_format
    conv.weight = nn.Parameter(weight.to(old.dtype).contiguous(memory_format=fmt), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype=old.dtype, device=old.device), requires_grad=False)


def _conv_bias64(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        return torch.zeros(conv.out_channels, dtype=torch.float64, device=conv.weight.device)
    return conv.bias.detach().double()


def can_fold_after(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.num_features == conv.out_channels
        and bn.running_mean is not None
    )


def fold_bn_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """bn(conv(x)) -> conv'(x)."""
    a, b = _bn_affine(bn)
    w = conv.weight.detach().double() * a.view(-1, 1, 1, 1)
    _set_weight_bias(conv, w, a * _conv_bias64(conv) + b)


def can_fold_before(bn: nn.Module, conv: nn.Module) -> bool:
    """conv(bn(x)) is foldable exactly: a plain (groups=1) conv that never reads padding."""
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None):
        return False
    no_padding = conv.padding == "valid" or all(p == 0 for p in conv.padding)
    return no_padding and conv.groups == 1 and conv.in_channels == bn.num_features and conv.padding_mode == "zeros"


def fold_bn_before(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """conv(bn(x)) -> conv'(x); exact only without padding (checked by can_fold_before)."""
    a, b = _bn_affine(bn)
    w = conv.weight.detach().double()  # (out, in, kh, kw)
    bias = _conv_bias64(conv) + (w * b.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    _set_weight_bias(conv, w * a.view(1, -1, 1, 1), bias)


def _eval_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) in the BN's own dtype with eval-mode bn(x) == a * x + b: `_bn_affine` without the float64 round trip,
    for folding on every call."""
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    b = -bn.running_mean * a
    return a, (b + bn.bias if bn.bias is not None else b)


def folded_conv_params(
    conv: nn.Conv2d, after: Optional[nn.Module] = None, before: Optional[nn.Module] = None
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The weight and bias of conv with an eval-mode BatchNorm `after` it and one `before` it (a pre-norm; only where
    `can_fold_before`) folded in, computed afresh without changing the modules: what a frozen model's forward uses
    to run conv + BN as one convolution. A BN given as None or nn.Identity (already folded) is skipped."""
    weight, bias = conv.weight, conv.bias
    if isinstance(before, nn.BatchNorm2d):
        a, b = _eval_affine(before)
        shift = (weight * b.view(1, -1, 1, 1)).sum((1, 2, 3))
        weight, bias = weight * a.view(1, -1, 1, 1), shift if bias is None else bias + shift
    if isinstance(after, nn.BatchNorm2d):
        a, b = _eval_affine(after)
        weight, bias = weight * a.view(-1, 1, 1, 1), b if bias is None else a * bias + b
    return weight, bias


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every foldable BatchNorm2d folded into its neighbouring conv (see module docstring).

    The original is not modified. The copy is in eval mode with `requires_grad=False` on every parameter; in eval
    mode its outputs equal the original's (eval mode) up to floating-point rounding.
    """

    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if isinstance(module, Fusable):
            module.fuse()
        elif isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (_, conv), (bn_name, bn) in zip(children, children[1:]):
                if can_fold_after(conv, bn):
                    fold_bn_after(conv, bn)
                    module._modules[bn_name] = nn.Identity()
    return folded.requires_grad_(False)


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers left in a model (0 for a fully folded HDKD model)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
