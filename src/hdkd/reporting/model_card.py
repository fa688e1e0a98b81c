"""The model card written beside an exported model: Markdown laid out from facts the export computed.

Nothing is computed here (`hdkd.deploy.export.model_card_facts` gathers the facts); what is not known is said to
be unknown rather than left out, and the intended use and the limits are always stated.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

PERCENT_METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1"}
DECIMAL_METRICS = {"auc_ovr_macro": "ROC AUC (one-vs-rest, macro)", "ece": "ECE (15 bins)"}

INTENDED_USE = (
    "Research and teaching: studying data-efficient classification of medical images (HDKD, hybrid knowledge "
    "distillation) and how such a model behaves once deployed. **It is not a medical device.** It has not been "
    "validated clinically or approved by any regulator, and must not be used to diagnose, triage, treat or "
    "reassure patients, nor replace the reading of a qualified clinician."
)


def render_model_card(card: Mapping[str, Any]) -> str:
    """Markdown for the facts in ``card`` (keys as `model_card_facts` returns them)."""
    model = card.get("model") or {}
    role = f" ({model['role']})" if model.get("role") else ""
    lines = [
        f"# Model card: {_md(model.get('name', 'model'))}{role}",
        "",
        f"{_code(card.get('file'))}: an image classifier exported by hdkd {_md(model.get('hdkd_version'))} "
        f"from {_code(model.get('checkpoint'))}.",
        "",
    ]
    for section in (
        _model,
        _intended_use,
        _data,
        _classes,
        _preprocessing,
        _metrics,
        _calibration,
        _check,
        _int8,
        _limits,
    ):
        lines += section(card)
    return "\n".join(lines).rstrip() + "\n"


def _model(card: Mapping[str, Any]) -> list[str]:
    model = card.get("model") or {}
    rows = [
        ("architecture", _code(model.get("name"))),
        ("role", _md(model.get("role") or "not recorded")),
        ("parameters", f"{model['params']:,}" if model.get("params") is not None else "unknown"),
        ("format", _md(card.get("format"))),
        ("precision", _md(card.get("precision"))),
        ("file size", _size(card.get("size_bytes"))),
    ]
    return ["## Model", ""] + _table(("", "value"), rows) + [""]


def _intended_use(card: Mapping[str, Any]) -> list[str]:
    return ["## Intended use", "", INTENDED_USE, ""]


def _data(card: Mapping[str, Any]) -> list[str]:
    lines = ["## Training data", ""]
    lines.append(
        _md(card.get("training_data"))
        if card.get("training_data")
        else "Not recorded in the checkpoint (export with `--report report.json` of the pipeline run that "
        "trained it to state it here)."
    )
    lines.append("")
    counts: Optional[Mapping[str, Mapping[str, int]]] = card.get("class_counts")
    if counts:
        splits = list(counts)
        classes = card.get("classes") or sorted({c for split in counts.values() for c in split})
        rows = [[_md(c)] + [str(counts[s].get(c, 0)) for s in splits] for c in classes]
        rows.append(["**total**"] + [str(sum(counts[s].values())) for s in splits])
        lines += _table(["class"] + splits, rows) + [""]
    for split, origin in (card.get("splits") or {}).items():
        lines.append(f"- {_md(split)}: {_md(origin)}")
    if card.get("selection"):
        lines.append(f"- model selection: {_md(card['selection'])}")
    return lines + ([""] if card.get("splits") or card.get("selection") else [])


def _classes(card: Mapping[str, Any]) -> list[str]:
    lines = ["## Classes", "", "In the order of the `logits` output:", ""]
    lines += [f"{i}. {_md(name)}" for i, name in enumerate(card.get("classes") or [])]
    return lines + [""]


def _preprocessing(card: Mapping[str, Any]) -> list[str]:
    spec = card.get("input") or {}
    size, chans = spec.get("img_size"), spec.get("in_chans")
    channels = (
        "grey (colour converted with the ITU-R 601 luma)" if chans == 1 else "RGB (grey repeated to three channels)"
    )
    return [
        "## Input preprocessing",
        "",
        "Exactly as in training (`hdkd predict` and `hdkd serve` do this from the file's metadata):",
        "",
        f"1. decode to 8-bit {channels}; transparency composited over black;",
        f"2. resize to {size} x {size} pixels, bilinear (PIL), aspect ratio ignored;",
        f"3. scale to [0, 1], subtract the mean {_floats(spec.get('mean'))} and divide by the std "
        f"{_floats(spec.get('std'))} per channel;",
        f"4. input `{spec.get('name')}`: float32, N x {chans} x {size} x {size} (any batch size N); output "
        f"`{spec.get('output')}`: N x {len(card.get('classes') or [])}; probabilities = softmax(logits / T) "
        f"with the temperature T below (1 when uncalibrated).",
        "",
    ]


def _metrics(card: Mapping[str, Any]) -> list[str]:
    lines = ["## Test metrics", ""]
    metrics = card.get("metrics") or {}
    rows = []
    for key, label in {**PERCENT_METRICS, **DECIMAL_METRICS}.items():
        value = metrics.get(key)
        if value is None:
            continue
        entry = value if isinstance(value, Mapping) else {"estimate": value}
        percent = key in PERCENT_METRICS
        low, high = entry.get("low"), entry.get("high")
        interval = f"{_num(low, percent)} to {_num(high, percent)}" if low is not None and high is not None else ""
        rows.append((label, _num(entry.get("estimate"), percent), interval))
    if not rows:
        lines.append(
            "No test metrics recorded: the checkpoint's metadata has none (export with `--report "
            "report.json` of the pipeline run to state them here)."
        )
        return lines + [""]
    n = f" ({metrics['n']} test images)" if metrics.get("n") else ""
    lines.append(
        f"Of the float model on the held-out test split{n}, from {_md(card.get('metrics_source'))}; "
        f"the test split selected nothing."
    )
    lines += [""] + _table(("metric", "value", "95% interval"), rows) + [""]
    if card.get("confidence_intervals"):
        lines += [f"Intervals: {_md(card['confidence_intervals'])}.", ""]
    test = (card.get("int8") or {}).get("test")
    if test:
        lines += [
            f"This int8 file, measured at export on {test['n']} test images: accuracy "
            f"{_num(test['int8']['accuracy'], True)} against {_num(test['float32']['accuracy'], True)} for "
            f"the float ONNX model ({test['accuracy_change_points']:+.2f} points).",
            "",
        ]
    return lines


def _calibration(card: Mapping[str, Any]) -> list[str]:
    cal = card.get("calibration")
    if not cal:
        return [
            "## Calibration",
            "",
            "Uncalibrated: no temperature was fitted, so probabilities are the raw "
            "softmax of the logits and may be over-confident.",
            "",
        ]
    n = f" ({cal['n_val']} images)" if cal.get("n_val") else ""
    lines = [
        "## Calibration",
        "",
        f"Temperature scaling: T = {cal['temperature']:.4f}, fitted on the {_md(cal.get('fitted_on'))} "
        f"split{n}; divide the logits by T before the softmax (`hdkd predict` does, unless told not to).",
    ]
    if cal.get("test_ece_before") is not None and cal.get("test_ece_after") is not None:
        lines.append(
            f"Test ECE {cal['test_ece_before']:.4f} before, {cal['test_ece_after']:.4f} after; test NLL "
            f"{_num(cal.get('test_nll_before'))} before, {_num(cal.get('test_nll_after'))} after."
        )
        if cal["test_ece_after"] > cal["test_ece_before"]:
            lines.append(
                "On the test split the temperature fitted on validation did not improve calibration (reported "
                "as measured; the test split chooses nothing)."
            )
    return lines + [""]


def _check(card: Mapping[str, Any]) -> list[str]:
    check = card.get("check") or {}
    if not check:
        return []
    return [
        "## Export check",
        "",
        f"ONNX Runtime reproduced PyTorch's logits of the float model on {check.get('images')} images "
        f"({', '.join(_md(k) for k in (check.get('per_batch') or {}))}): max abs difference "
        f"{check.get('max_abs_diff', 0):.2e}, tolerance {check.get('tolerance', 0):g}.",
        "",
    ]


def _int8(card: Mapping[str, Any]) -> list[str]:
    q = card.get("int8")
    if not q:
        return []
    quant, latency = q.get("quantization") or {}, q.get("latency_batch1") or {}
    scales = "per-channel" if quant.get("per_channel") else "per-tensor"
    lines = [
        "## int8 quantization",
        "",
        f"- {_md(quant.get('method'))}, {scales} weight scales ({_md(quant.get('per_channel_chosen_by'))});",
        f"- calibrated on {quant.get('calibration_images')} images of the training split (never test);",
        f"- file size {_size(q['size_bytes']['int8'])} against {_size(q['size_bytes']['float32'])} "
        f"({q['size_ratio']:.2f} x);",
    ]
    if latency:
        lines.append(
            f"- batch-1 latency {latency['int8_ms']:.2f} ms against {latency['float32_ms']:.2f} ms "
            f"({_speed(latency['speedup'])}; {latency['threads']} thread, median of "
            f"{latency['repeats']} interleaved runs);"
        )
    test = q.get("test")
    if test:
        lines.append(
            f"- test accuracy {_num(test['int8']['accuracy'], True)} against "
            f"{_num(test['float32']['accuracy'], True)} ({test['accuracy_change_points']:+.2f} points); "
            f"the two agree on {_num(test['prediction_agreement'], True)} of the {test['n']} test images."
        )
    else:
        lines.append("- test accuracy not measured (no test split given).")
    return lines + [""]


def _limits(card: Mapping[str, Any]) -> list[str]:
    size = (card.get("input") or {}).get("img_size")
    lines = [
        "## Limits",
        "",
        "- Trained and tested on images from one source (above): accuracy on images from other scanners, "
        "sites, protocols or populations is unknown and likely lower.",
        "- It always answers with one of its classes, also for an image that shows none of them (another "
        "body part, another modality, a photograph): it has no out-of-distribution detection.",
        "- The test metrics describe one finite test set; their intervals cover the sampling of that set, "
        "not a change of population.",
    ]
    if size is not None and size < 224:
        lines.append(f"- It sees the image at {size} x {size} pixels: fine detail, such as small lesions, is lost.")
    if not card.get("calibration"):
        lines.append("- Its probabilities are not calibrated.")
    if card.get("int8"):
        lines.append("- int8 arithmetic changes some predictions relative to the float model (see above).")
    return lines + [""]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _md(text: Any) -> str:
    """Text safe inside Markdown (tables included): no pipes, HTML or emphasis from a class or file name."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "*_`[]":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", " ")


def _code(text: Any) -> str:
    """A Markdown code span (backslash escapes do not work inside one, so backticks become quotes)."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def _num(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * float(value):.2f} %" if percent else f"{float(value):.4f}"


def _floats(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in (values or [])) + ")"


def _speed(speedup: float) -> str:
    return f"{speedup:.2f} x faster" if speedup >= 1 else f"{1 / speedup:.2f} x slower"


def _size(n: Any) -> str:
    return "unknown" if n is None else f"{int(n) / 1e6:.2f} MB"
