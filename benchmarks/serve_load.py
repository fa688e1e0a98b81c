"""Load test of `hdkd serve` on loopback: concurrent clients upload images to POST /api/predict.

    python benchmarks/serve_load.py [MODEL] [--images DIR] [--requests 200] [--concurrency 8] [--no-explain]

MODEL is a checkpoint or an ONNX model (default: a tiny random-weight HDKD student at 32 px, 4 classes). The app
runs in this process with uvicorn on 127.0.0.1 (a free port); images cycle through the JPEG/PNG files of --images
(default: ../shared/data/brain_tumor_mri/Testing, else generated PNGs). Reports the failures and the latency
percentiles (p50, p95) per request, as JSON with -o. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import httpx
import numpy as np
import timm
from PIL import Image

import hdkd.models  # noqa: F401 (registers the hdkd models with timm)
from hdkd.deploy.loading import load_classifier
from hdkd.deploy.serve import background_server, build_explainer, create_app
from hdkd.io import atomic_write_text
from hdkd.models import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "brain_tumor_mri" / "Testing"
BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def run_load(url: str, payloads: Sequence[tuple[str, bytes]], requests: int = 200, concurrency: int = 8) -> dict:
    """POST ``requests`` uploads (cycling through ``payloads``) from ``concurrency`` clients, each with its own
    keep-alive connection; returns counts, failures (first few, with the reason) and latency percentiles (ms)."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        raise ValueError(f"{url}: the load test only talks to loopback")
    jobs = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120.0) as http:
            while True:
                with lock:
                    index = next(jobs, None)
                if index is None:
                    return
                name, data = payloads[index % len(payloads)]
                start = time.perf_counter()
                try:
                    response = http.post("api/predict", files={"file": (name, data)})
                    ok = response.status_code == 200 and "class" in response.json()
                    reason = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, reason = False, f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        failures.append(f"{name}: {reason}")

    wall = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - wall
    ms = [1000 * t for t in latencies]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": len(latencies),
        "failed": len(failures),
        "failures": failures[:5],
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 2),
        "p50_ms": round(percentile(ms, 50), 1) if ms else None,
        "p95_ms": round(percentile(ms, 95), 1) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
        "max_ms": round(max(ms), 1) if ms else None,
    }


def image_payloads(folder: Optional[Path], limit: int = 64) -> list[tuple[str, bytes]]:
    """Up to ``limit`` JPEG/PNG files of ``folder`` (sorted, round-robin over its subfolders), else generated PNGs."""
    if folder is not None and folder.is_dir():
        groups = [
            sorted(p for p in sub.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            for sub in sorted(d for d in folder.iterdir() if d.is_dir())
        ] or [sorted(folder.glob("*.*"))]
        files = [p for p in itertools.chain(*itertools.zip_longest(*groups)) if p is not None][:limit]
        if files:
            return [(p.name, p.read_bytes()) for p in files]
    rng = np.random.default_rng(0)
    out = []
    for i in range(min(limit, 16)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(buffer, format="PNG")
        out.append((f"generated_{i}.png", buffer.getvalue()))
    return out


def tiny_checkpoint(folder: Path) -> Path:
    """A random-weight HDKD student at 32 px with the Brain Tumor MRI class names (no training)."""
    model = timm.create_model("hdkd", num_classes=4, img_size=32, in_chans=3).eval()
    return save_checkpoint(
        model,
        folder / "tiny_hdkd.safetensors",
        "hdkd",
        {"num_classes": 4, "img_size": 32, "in_chans": 3},
        extra={"class_names": list(BRAIN_CLASSES), "img_size": 32, "in_chans": 3, "role": "hdkd"},
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="checkpoint or ONNX model (default: a tiny random one)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(args.model) if args.model else tiny_checkpoint(Path(tmp))
        classifier = load_classifier(model_path, device=args.device)
        explainer = None if args.no_explain else build_explainer(classifier)
        payloads = image_payloads(args.images)
        with background_server(create_app(classifier, explainer)) as url:
            result = run_load(url, payloads, args.requests, args.concurrency)
    result.update(
        model=str(args.model or "tiny random hdkd (32 px)"),
        images=len(payloads),
        explanations=explainer is not None,
        device=args.device,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
