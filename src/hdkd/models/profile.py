"""Parameter and FLOP counts, measured the way the spec's table is (FLOPs = 2 x MACs of matmuls and convs)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def _onednn_conv_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN convolutions that the HDKD blocks call directly (`PointwiseConv`'s aten.mkldnn_convolution, the frozen
    blocks' conv with BN and GELU fused, mkldnn._convolution_pointwise), counted as the convolution they are."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


_CUSTOM_FLOPS = {torch.ops.aten.mkldnn_convolution: _onednn_conv_flops}
if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
    _CUSTOM_FLOPS[torch.ops.mkldnn._convolution_pointwise] = _onednn_conv_flops


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, img_size: int, in_chans: int = 3) -> float:
    """FLOPs of one eval-mode forward pass on one image (PyTorch's own counter: convs, matmuls, attention)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    # the math backend decomposes attention into matmuls the counter sees (fused CPU kernels are not counted)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(x)
    model.train(was_training)
    return float(counter.get_total_flops())
