"""`hdkd serve MODEL`: the web page and HTTP API of `hdkd.deploy.serve`, run by uvicorn (localhost by default)."""

from __future__ import annotations

import argparse

from hdkd.errors import ConfigError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a web page and HTTP API for a trained model (localhost)",
        description="Serve a model: a page to drop an image on (JPEG, PNG, DICOM) and see the predicted class, "
        "every class's probability and an explanation overlay, and its API (POST /api/predict, "
        "GET /api/model, GET /api/health; schema at /openapi.json). An ONNX model serves "
        "predictions without the overlay.",
    )
    p.add_argument("model", metavar="MODEL", help="a .safetensors checkpoint or an exported .onnx model")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the "
        "network, with no authentication)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default 20 MB)")
    p.add_argument("--no-explain", action="store_true", help="predictions without the explanation overlay")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checkpoints; ONNX runs on the CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected a port number from 0 to 65535")
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb}: expected a positive size in MB")
    from hdkd.deploy import serve as serving  # torch, FastAPI and the model only when the command runs
    from hdkd.deploy.loading import load_classifier

    classifier = load_classifier(args.model, device=args.device)
    explainer = None if args.no_explain else serving.build_explainer(classifier)
    loopback = args.host in LOOPBACK_HOSTS
    app = serving.create_app(
        classifier,
        explainer,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"] if loopback else None,
    )
    try:
        sock = serving.bind_socket(args.host, args.port)
    except OSError as exc:
        raise ConfigError(
            f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc})"
        ) from None
    info = classifier.info
    print(
        f"hdkd serve: {info.model_name} ({', '.join(info.class_names)}; {info.img_size} px), "
        f"{'with' if explainer else 'without'} explanation overlays"
    )
    if not loopback:
        print(f"hdkd serve: listening on {args.host}, reachable from the network, without authentication")
    print(f"hdkd serve: open {serving.url_of(sock)}  (Ctrl+C to stop)", flush=True)
    with sock:
        serving.uvicorn_server(app).run(sockets=[sock])
    return 0
