"""`hdkd serve MODEL`: the web page and HTTP API of `hdkd.deploy.serve`, run by uvicorn (localhost by default)."""
from __future__ import annotations

import argparse
from typing import Optional

from ..deploy.loading import load_classifier
from ..deploy.serve import Explainer, bind_socket, create_app, url_of, uvicorn_server
from ..errors import ConfigError
from ..evaluation.inference import Classifier, TorchClassifier

try:  # from the explain branch; until it is merged the server runs without overlays (drop this guard then)
    from ..deploy.explain import explain_array
    from ..reporting.overlay import render_overlay
except ImportError:  # pragma: no cover - gone once the explain branch is merged
    explain_array = render_overlay = None

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="a web page and HTTP API for a trained model (localhost)",
        description="Serve a model: a page to drop an image on (JPEG, PNG, DICOM) and see the predicted class, "
                    "every class's probability and an explanation overlay, and its API (POST /api/predict, "
                    "GET /api/model, GET /api/health; schema at /openapi.json). An ONNX model serves "
                    "predictions without the overlay.")
    p.add_argument("model", metavar="MODEL", help="a .safetensors checkpoint or an exported .onnx model")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                        "network, with no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default 20 MB)")
    p.add_argument("--no-explain", action="store_true", help="predictions without the explanation overlay")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checkpoints; ONNX runs on the CPU)")
    p.set_defaults(func=run)


def build_explainer(classifier: Classifier) -> Optional[Explainer]:
    """The overlay of the explain module's first map for the predicted class; None for ONNX models."""
    if not isinstance(classifier, TorchClassifier) or explain_array is None:
        return None

    def explain(image):
        maps = explain_array(classifier, classifier.info, image)
        return render_overlay(image, next(iter(maps.values()))) if maps else None

    return explain


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected a port number from 0 to 65535")
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb}: expected a positive size in MB")
    classifier = load_classifier(args.model, device=args.device)
    explainer = None if args.no_explain else build_explainer(classifier)
    loopback = args.host in LOOPBACK_HOSTS
    app = create_app(classifier, explainer, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"] if loopback else None)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"--host {args.host} --port {args.port}: cannot listen there "
                          f"({exc.strerror or exc})") from None
    info = classifier.info
    print(f"hdkd serve: {info.model_name} ({', '.join(info.class_names)}; {info.img_size} px), "
          f"{'with' if explainer else 'without'} explanation overlays")
    if not loopback:
        print(f"hdkd serve: listening on {args.host}, reachable from the network, without authentication")
    print(f"hdkd serve: open {url_of(sock)}  (Ctrl+C to stop)", flush=True)
    with sock:
        uvicorn_server(app).run(sockets=[sock])
    return 0
