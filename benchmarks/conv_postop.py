"""The frozen models' convolutions one by one: GELU as oneDNN's post-op against a separate GELU, and the weight as
a plain tensor (reordered by oneDNN on every call) against one reordered ahead of time.

Runs one frozen batch-1 forward of each model at --size to collect every `hdkd.models.hdkd.fused_conv` call (its
input, BN-folded weight, stride, groups and whether a GELU follows), then times each call's variants interleaved
(`timing.interleaved_medians`) on those exact tensors:
- `fused`: the call as the model makes it (`mkldnn._convolution_pointwise`, GELU as post-op where it has one);
- `separate`: the same convolution without post-op, then PyTorch's GELU on its NHWC view (as `hdkd.models.hdkd.GELU`);
- `prepacked`: the fused call with the weight reordered once into oneDNN's blocked layout
  (`mkldnn._reorder_convolution_weight`), as inductor's frozen graphs do.
All three give the same output (the maximum difference is printed). Totals are summed over one forward.

    OMP_NUM_THREADS=1 python benchmarks/conv_postop.py --models hdkd hdkd_teacher --size 224 \
        --json docs/bench/conv_postop_224.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import hdkd.models  # noqa: F401 - registers the models with timm
from hdkd.runtime import reuse_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import interleaved_medians, write_result_json  # noqa: E402

POINTWISE = torch.ops.mkldnn._convolution_pointwise
HDKD_MODULE = sys.modules["hdkd.models.hdkd"]  # the module (hdkd.models.hdkd is also the registered function)


def collect_calls(model_name: str, size: int) -> list[dict]:
    """Every fused convolution of one frozen forward: its input and its folded parameters, as called."""
    calls, original = [], HDKD_MODULE.fused_conv

    def recording(x, conv, after, before=None, gelu=False):
        weight, bias = HDKD_MODULE.folded_conv_params(conv, after, before)
        weight = weight.contiguous(memory_format=torch.channels_last)
        calls.append(dict(x=x, weight=weight, bias=bias, conv=conv, gelu=gelu))
        return original(x, conv, after, before, gelu)

    model = timm.create_model(model_name, num_classes=4, img_size=size).eval()
    HDKD_MODULE.fused_conv = recording
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, size, size))
    finally:
        HDKD_MODULE.fused_conv = original
    return calls


def variants(call: dict) -> dict:
    x, w, b, conv = call["x"], call["weight"], call["bias"], call["conv"]
    args = (conv.padding, conv.stride, conv.dilation, conv.groups)
    post = ("gelu", [], "none") if call["gelu"] else ("none", [], "")
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, *args, list(x.shape))

    def separate():
        y = POINTWISE(x, w, b, *args, "none", [], "")
        return F.gelu(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if call["gelu"] else y

    return {
        "fused": lambda: POINTWISE(x, w, b, *args, *post),
        "separate": separate,
        "prepacked": lambda: POINTWISE(x, packed, b, *args, *post),
    }


def describe(call: dict) -> str:
    conv, x = call["conv"], call["x"]
    kind = "dw" if conv.groups > 1 else f"{conv.kernel_size[0]}x{conv.kernel_size[1]}"
    gelu = "+gelu" if call["gelu"] else ""
    return f"{kind}{gelu} {conv.in_channels}->{conv.out_channels} s{conv.stride[0]} @{x.shape[2]}x{x.shape[3]}"


def measure(model_name: str, size: int, repeats: int) -> dict:
    rows, totals = [], {"fused": 0.0, "separate": 0.0, "prepacked": 0.0}
    with torch.no_grad():
        for call in collect_calls(model_name, size):
            timers = variants(call)
            reference = timers["fused"]()
            diff = max((fn() - reference).abs().max().item() for fn in timers.values())
            ms = {k: 1e3 * v for k, v in interleaved_medians(timers, repeats, warmup=3).items()}
            for k in totals:
                totals[k] += ms[k]
            rows.append(dict(conv=describe(call), max_abs_diff=diff, **{f"{k}_ms": v for k, v in ms.items()}))
            print(
                f"{model_name:13s} {rows[-1]['conv']:32s} fused {ms['fused']:7.3f} ms  separate {ms['separate']:7.3f}"
                f" ({ms['fused'] / ms['separate']:.2f} x)  prepacked {ms['prepacked']:7.3f}"
                f" ({ms['fused'] / ms['prepacked']:.2f} x)  max diff {diff:.1e}"
            )
    print(
        f"{model_name:13s} {'sum over one forward':32s} fused {totals['fused']:7.2f} ms  separate"
        f" {totals['separate']:7.2f}  prepacked {totals['prepacked']:7.2f}"
    )
    return dict(convs=rows, **{f"total_{k}_ms": v for k, v in totals.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["hdkd", "hdkd_teacher"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reuse_freed_memory()
    results = {name: measure(name, args.size, args.repeats) for name in args.models}
    if args.json:
        write_result_json(args.json, dict(size=args.size, repeats=args.repeats, models=results))


if __name__ == "__main__":
    main()
