"""Speed tooling at tiny settings: `hdkd benchmark`, the authors'-formulation baseline and the matmul peak script."""

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch

import hdkd
from hdkd.cli import main

REPO = Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_cli_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(
        [
            "benchmark",
            "--models",
            "hdkd",
            "resnet18",
            "no_such_model",
            "--img-size",
            "32",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert {"torch", "threads"} <= set(report["meta"])
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["no_such_model"]["status"] == "skipped" and "no_such_model" in rows["no_such_model"]["reason"]
    for name in ("hdkd", "resnet18"):
        r = rows[name]
        assert r["status"] == "ok" and r["img_size"] == 32 and r["batch"] == 2 and r["amp"] == "none"
        assert r["device"] == "cpu"
        for key in ("latency_ms", "infer_images_per_s", "train_images_per_s"):
            assert r[key] > 0, key
        model = timm.create_model(name, pretrained=False, num_classes=4, **({"img_size": 32} if name == "hdkd" else {}))
        assert r["params"] == hdkd.count_params(model)
        assert r["flops"] == hdkd.count_flops(model, 32)
    table = (out / "benchmark.md").read_text()
    assert "| hdkd |" in table and "| resnet18 |" in table and "no_such_model" in table
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| hdkd |" in capsys.readouterr().out


def test_benchmark_rejects_bad_amp():
    from hdkd.experiments.benchmark import run_benchmark

    with pytest.raises(hdkd.ConfigError):
        run_benchmark(["hdkd"], img_size=32, batch_sizes=[2], amp="fp8")


def test_authors_formulation_gives_our_loss():
    bench = _load_script("authors_vs_single_pass")
    teacher, student, x, y = bench.build(32, 2)
    ours = hdkd.HDKDLoss(teacher)(student, x, y).total.item()
    theirs = bench.authors_loss(teacher, student, x, y).item()
    assert abs(ours - theirs) <= 1e-5 * abs(ours)


def test_matmul_peak_tiny():
    peak = _load_script("matmul_peak")
    rows = peak.measure_peak([64], ["fp32", "bf16"], torch.device("cpu"), repeats=1, warmup=0, inner=1)
    assert [r["dtype"] for r in rows] == ["fp32", "bf16"] and all(r["gflops_median"] > 0 for r in rows)


def test_benchmark_fraction_of_matmul_peak_and_channels_last_entries():
    from hdkd.experiments.benchmark import _split_suffixes, format_table, run_benchmark

    assert _split_suffixes("hdkd+foldbn+cl") == _split_suffixes("hdkd+cl+foldbn") == ("hdkd", True, True)
    rows = run_benchmark(["hdkd+cl", "hdkd+foldbn"], img_size=32, batch_sizes=[2], repeats=1, warmup=0, peak_size=64)
    cl, folded = rows
    assert cl["status"] == folded["status"] == "ok" and cl["peak_dtype"] == "fp32" and cl["peak_gflops"] > 0
    assert cl["peak_gflops"] == folded["peak_gflops"]  # one roof, measured in the same run
    assert cl["train_gflops"] == pytest.approx(3 * cl["flops"] * cl["train_images_per_s"] / 1e9)
    assert cl["infer_gflops"] == pytest.approx(cl["flops"] * cl["infer_images_per_s"] / 1e9)
    for key in ("latency", "infer", "train"):
        assert cl[f"{key}_fraction_of_peak"] == pytest.approx(cl[f"{key}_gflops"] / cl["peak_gflops"])
    assert folded["train_fraction_of_peak"] is None  # inference only
    assert "% of matmul peak" in format_table(rows)


def test_conv_postop_collects_every_fused_conv_and_its_variants_agree():
    """benchmarks/conv_postop.py times the frozen student's own convolutions: one per stem block and three per MBCSA
    block (17 at any size), each variant giving the model's output."""
    postop = _load_script("conv_postop")
    if postop.HDKD_MODULE._ONEDNN_POINTWISE is None or not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN pointwise convolution in this build")
    torch.manual_seed(0)
    calls = postop.collect_calls("hdkd", 32)
    assert len(calls) == 17 and sum(c["gelu"] for c in calls) == 12
    assert postop.describe(calls[0]) == "3x3+gelu 3->64 s2 @32x32"
    with torch.no_grad():
        for call in calls[:6]:
            outputs = {name: fn() for name, fn in postop.variants(call).items()}
            for out in outputs.values():
                torch.testing.assert_close(out, outputs["fused"], rtol=1e-5, atol=1e-5)
