"""`hdkd export CHECKPOINT --format onnx [--int8] -o model.onnx`: one checked, self-describing ONNX file, its
model card (``model.md``) and, with ``--int8``, the int8-vs-float comparison (``model.int8.json``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hdkd.commands import add_config_options
from hdkd.errors import ConfigError

FORMATS = ("onnx",)  # hdkd.deploy.export.FORMATS and DEFAULT_OPSET (a test keeps them equal); the command imports
DEFAULT_OPSET = 20  # torch and ONNX only when it runs, so that `hdkd --help` stays fast


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (optionally int8) with its metadata and a model card",
        description="Export a trained checkpoint to one ONNX file (dynamic batch, weights inside, preprocessing "
        "and class names in its metadata), check it against PyTorch, and write a model card beside it.",
    )
    p.add_argument("checkpoint", help="best.safetensors or last.safetensors from `hdkd train` or `hdkd pipeline`")
    p.add_argument("--format", default="onnx", help=f"export format ({', '.join(FORMATS)})")
    p.add_argument("--output", "-o", help="the .onnx file (default: the checkpoint's name with .onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--int8", action="store_true", help="quantize to int8 (ONNX Runtime static QDQ), calibrated on training images"
    )
    p.add_argument(
        "--calibration",
        metavar="DATA",
        help="dataset whose TRAINING split calibrates --int8 (as `hdkd pipeline --data` takes)",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=300,
        metavar="N",
        help="training images used for calibration (default 300)",
    )
    p.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8 weight scales per output channel (or per tensor with --no-per-channel); default: "
        "whichever agrees better with the float model on held-out training images",
    )
    p.add_argument(
        "--evaluate-data",
        metavar="DATA",
        help="dataset whose test split measures the int8 accuracy change (default: --calibration's)",
    )
    p.add_argument(
        "--check-images",
        metavar="DIR",
        help="real images (recursive) on which ONNX Runtime must match PyTorch, besides random ones",
    )
    p.add_argument(
        "--report",
        metavar="REPORT_JSON",
        help="the pipeline's report.json: test metrics, intervals and temperature for the model card and the metadata",
    )
    add_config_options(p, "config file for the data settings (split seed, validation fraction, ...), as for training")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample and the random check images")
    p.set_defaults(func=run)


def run(args) -> int:
    from hdkd.config import build_config
    from hdkd.deploy.export import export_onnx

    if args.format not in FORMATS:
        raise ConfigError(f"--format: unknown export format {args.format!r}; choose from {', '.join(FORMATS)}")
    calibration = evaluate = None
    if args.int8:
        calibration = build_config("teacher", args.config, args.set, data={"path": args.calibration}).data
        if calibration.path is None and calibration.csv is None:
            raise ConfigError(
                "--int8: needs --calibration DATA (or data.path in a config), the dataset whose "
                "training images calibrate the int8 ranges"
            )
        if args.evaluate_data:
            evaluate = build_config("teacher", args.config, args.set, data={"path": args.evaluate_data}).data
    elif args.calibration or args.evaluate_data:
        raise ConfigError("--calibration/--evaluate-data: only used with --int8")
    output = Path(args.output) if args.output else Path(args.checkpoint).with_suffix(".onnx")
    result = export_onnx(
        args.checkpoint,
        output,
        opset=args.opset,
        int8=args.int8,
        calibration=calibration,
        calibration_images=args.calibration_images,
        per_channel=args.per_channel,
        evaluate_data=evaluate,
        check_images=args.check_images,
        report=args.report,
        seed=args.seed,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    for line in summary_lines(result, output):
        print(line)
    print(f"model card: {result['paths']['model_card']}")
    return 0


def summary_lines(result: dict, output: Path) -> list[str]:
    info, check, q = result["info"], result["check"], result["int8"]
    lines = [
        f"exported {info.model_name} ({info.role or 'no role'}) to {output} "
        f"({result['size_bytes'] / 1e6:.2f} MB, {'int8' if q else 'float32'})",
        f"check: ONNX Runtime vs PyTorch max abs logit difference {check['max_abs_diff']:.2e} "
        f"(tolerance {check['tolerance']:g}, {check['images']} images)",
    ]
    if q is None:
        return lines
    quant, size, latency, test = q["quantization"], q["size_bytes"], q["latency_batch1"], q["test"]
    lines.append(
        f"int8: {'per-channel' if quant['per_channel'] else 'per-tensor'} weight scales "
        f"({quant['per_channel_chosen_by']}), calibrated on {quant['calibration_images']} training images"
    )
    if test:
        lines.append(
            f"int8: test accuracy {100 * test['float32']['accuracy']:.2f} % -> "
            f"{100 * test['int8']['accuracy']:.2f} % ({test['accuracy_change_points']:+.2f} points; "
            f"{100 * test['prediction_agreement']:.1f} % same predictions on {test['n']} test images)"
        )
    else:
        lines.append("int8: no test split to measure the accuracy change on")
    lines.append(
        f"int8: size {size['float32'] / 1e6:.2f} MB -> {size['int8'] / 1e6:.2f} MB ({q['size_ratio']:.2f} x); "
        f"batch-1 latency {latency['float32_ms']:.2f} ms -> {latency['int8_ms']:.2f} ms "
        f"({speed(latency['speedup'])}, {latency['threads']} thread)"
    )
    lines.append(f"int8 report: {result['paths']['int8_report']}")
    return lines


def speed(speedup: float) -> str:
    return f"{speedup:.2f} x faster" if speedup >= 1 else f"{1 / speedup:.2f} x slower"
