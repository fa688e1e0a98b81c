"""`hdkd benchmark --onnx`'s rows: each model exported as `hdkd export` does, ORT checked and timed against eager."""

from hdkd.deploy.onnx_benchmark import format_onnx_rows, onnx_latency_rows


def test_rows_hold_both_latencies_and_an_agreeing_export():
    rows = onnx_latency_rows(["hdkd", "resnet18"], img_size=32, classes=4, thread_counts=[1], repeats=2, warmup=1)
    assert [r["model"] for r in rows] == ["hdkd", "resnet18"] and all(r["exported"] for r in rows)
    for row in rows:
        assert row["max_abs_diff"] < 1e-4  # the timed graph computes what the PyTorch model computes
        s = row["settings"]["1_threads"]
        assert s["torch_eager_ms"] > 0 and s["onnxruntime_ms"] > 0
        assert abs(s["ratio_onnxruntime_to_torch"] - s["onnxruntime_ms"] / s["torch_eager_ms"]) < 1e-9
    table = format_onnx_rows(rows)
    assert table.count("\n") == 3 and "| hdkd | 1 |" in table


def test_a_model_that_does_not_export_is_reported_not_fatal(monkeypatch):
    def failing_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("hdkd.deploy.onnx_benchmark.export_graph", failing_export)
    (row,) = onnx_latency_rows(["resnet18"], img_size=32, classes=4, thread_counts=[1], repeats=1, warmup=0)
    assert row == {"model": "resnet18", "exported": False, "error": "unsupported operator"}
    assert "not exported: unsupported operator" in format_onnx_rows([row])
