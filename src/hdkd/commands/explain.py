"""`hdkd explain CHECKPOINT IMAGE... -o DIR`: Grad-CAM and attention-rollout overlays, and explanations.json.

Per image ``<stem>_gradcam.png`` and, for the students, ``<stem>_rollout.png`` (for ``hdkd`` also
``<stem>_rollout_cls.png`` and ``<stem>_rollout_dist.png``): the map over the image as the model saw it (its input
size), enlarged to a viewable size. ``explanations.json`` holds per image the predicted class, the probabilities,
the class explained and the files. An image that cannot be read gets an ``error`` entry, the others are explained
and the exit status is 1. Every file is written atomically.
"""

from __future__ import annotations

import argparse

METHODS = ("gradcam", "rollout")  # hdkd.deploy.explain.METHODS (a test keeps the two equal)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="saliency overlays (Grad-CAM, attention rollout) of a checkpoint on images",
        description="Explain a trained model's decisions on images: Grad-CAM on the last convolutional stage for "
        "every HDKD model and attention rollout through the transformer's class (and distillation) "
        "tokens for the students, as PNG overlays plus explanations.json.",
    )
    p.add_argument("checkpoint", help="a .safetensors checkpoint (ONNX exports cannot be explained)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--target", metavar="CLASS", help="class name to explain (default: the predicted class)")
    p.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        metavar="METHOD",
        help=f"any of {', '.join(METHODS)} (default: all the model supports)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hdkd.deploy.explain_files import run_explain  # torch and the model only when the command runs

    return run_explain(args)
