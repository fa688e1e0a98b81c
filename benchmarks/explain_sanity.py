"""Do the explanation maps mean something? Two checks of `hdkd explain`'s maps on real test images.

1. Model randomisation (Adebayo et al., 2018), cascading from the top: the layers are replaced by freshly
   initialised ones (timm's own initialisation, seeded; BatchNorm statistics reset too) group by group from the
   output towards the input (heads, then the DFLT, then stage 3, 2, 1; the last step is the whole network). At each
   step: Spearman rank correlation between the trained model's map and the randomised model's map of the same image
   and class (the trained model's prediction), over the pixels of the model-size map. A map that explains the
   model must change when the weights do: the correlation must be low once the network is randomised.
2. Deletion (Petsiuk et al., 2018): the pixels are removed most salient first (ties in random order), in equal
   steps until none is left; a removed pixel is set to 0 in the normalised input, i.e. to the normalisation mean
   (ImageNet's mean colour). The curve is the softmax probability (no temperature) of the class the model
   predicted on the intact image; its area (trapezoids over the removed fraction 0..1) should be smaller than the
   area when the pixels are removed in random order (the mean of several seeded random orders per image).

    python benchmarks/explain_sanity.py --runs /work/shared_runs/brain32 \\
        --data /work/shared/data/brain_tumor_mri/Testing --per-class 25 --json docs/bench/explain_sanity.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
from scipy.stats import spearmanr, t, wilcoxon

from hdkd.deploy.explain import gradcam_maps, has_dflt, rollout_maps
from hdkd.evaluation.inference import TorchClassifier, read_model_image, to_input
from hdkd.io import atomic_write_text
from hdkd.models import read_checkpoint_metadata

ROLES = ("teacher", "student", "hdkd")


def sample_images(root: Path, per_class: int, seed: int) -> list[tuple[Path, str]]:
    """A fixed seeded sample of ``per_class`` images from each class folder (sorted listing, then drawn)."""
    rng = np.random.default_rng(seed)
    picked = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        picked += [(files[i], folder.name) for i in sorted(rng.choice(len(files), per_class, replace=False))]
    return picked


def cascade_groups(model: torch.nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """Top-down groups of state-dict key prefixes, each step adding one group to those already randomised."""
    if has_dflt(model):
        tail = [
            ("heads", ("head.", "head_dist.", "norm.")),
            ("dflt", ("blocks.", "patch_embed.", "cls_token", "dist_token", "pos_embed")),
        ]
    else:
        tail = [("heads", ("head.", "head_hidden."))]
    return tail + [("stage3", ("stages.2.",)), ("stage2", ("stages.1.",)), ("all", ("stages.0.",))]


def randomised_models(checkpoint: Path, trained: torch.nn.Module, seed: int):
    """Yield (step name, model) with the cascade of `cascade_groups` re-initialised from a fresh seeded model."""
    meta = read_checkpoint_metadata(checkpoint)
    torch.manual_seed(seed)
    fresh = timm.create_model(meta["model_name"], pretrained=False, **meta["model_args"]).state_dict()
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    model = timm.create_model(meta["model_name"], pretrained=False, **meta["model_args"]).eval()
    prefixes: tuple[str, ...] = ()
    for name, group in cascade_groups(trained):
        prefixes += group
        state.update({k: fresh[k] for k in state if k.startswith(prefixes)})
        model.load_state_dict(state)
        yield name, model


def all_maps(model: torch.nn.Module, inputs: torch.Tensor, targets: list[int]) -> dict[str, np.ndarray]:
    maps = {"gradcam": gradcam_maps(model, inputs, targets)}
    if has_dflt(model):
        maps.update(rollout_maps(model, inputs))
    return maps


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho per image of two (N, H, W) stacks; NaN where a map is constant (rank correlation undefined)."""
    out = []
    for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True):
        out.append(np.nan if np.ptp(x) == 0 or np.ptp(y) == 0 else spearmanr(x, y).statistic)
    return np.asarray(out, dtype=np.float64)


def deletion_curve(
    model: torch.nn.Module, inputs: torch.Tensor, target: int, order: np.ndarray, steps: int
) -> np.ndarray:
    """Probability of ``target`` after removing the first k/steps of the pixels in ``order``, k = 0..steps."""
    pixels = order.size
    batch = inputs.repeat(steps + 1, 1, 1, 1)
    flat = batch.view(steps + 1, batch.shape[1], -1)
    for k in range(1, steps + 1):
        flat[k, :, torch.from_numpy(order[: round(pixels * k / steps)])] = 0.0
    with torch.no_grad():
        return torch.softmax(model(batch).double(), dim=1)[:, target].cpu().numpy()


def auc(curve: np.ndarray) -> float:
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def salient_first(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices, most salient first; equal values in random order."""
    perm = rng.permutation(saliency.size)
    return perm[np.argsort(-saliency.ravel()[perm], kind="stable")]


def stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return {
        "mean": float(defined.mean()) if defined.size else None,
        "std": float(defined.std(ddof=1)) if defined.size > 1 else None,
        "mean_abs": float(np.abs(defined).mean()) if defined.size else None,
        "n": int(defined.size),
        "undefined": int(values.size - defined.size),
    }


def paired_difference(salient: np.ndarray, random: np.ndarray) -> dict:
    """Mean per-image AUC difference (salient-first minus random) with a 95% t interval and the two-sided
    Wilcoxon signed-rank p-value: is removing the salient pixels first really faster than random removal?"""
    d = np.asarray(salient) - np.asarray(random)
    half = t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {
        "mean": float(d.mean()),
        "ci95": [float(d.mean() - half), float(d.mean() + half)],
        "wilcoxon_p": float(wilcoxon(d).pvalue),
    }


def check_model(checkpoint: Path, samples, args) -> dict:
    clf = TorchClassifier.from_checkpoint(checkpoint)
    model, info = clf.model, clf.info
    images = np.stack([read_model_image(path, info) for path, _ in samples])
    inputs = to_input(images, info)
    with torch.no_grad():
        predicted = model(inputs).argmax(1).tolist()
    labels = [info.class_names.index(label) for _, label in samples]
    trained = all_maps(model, inputs, predicted)

    randomisation = {name: {} for name in trained}
    for step, random_model in randomised_models(checkpoint, model, args.seed):
        for name, maps in all_maps(random_model, inputs, predicted).items():
            randomisation[name][step] = stats(spearman_rows(trained[name], maps))

    saliency_auc = {name: [] for name in trained}
    random_auc, curves = [], {name: [] for name in [*trained, "random"]}
    for i in range(len(samples)):
        rng = np.random.default_rng([args.seed, i])
        random_curves = [
            deletion_curve(model, inputs[i : i + 1], predicted[i], rng.permutation(images[i][..., 0].size), args.steps)
            for _ in range(args.random_orders)
        ]
        curves["random"].append(np.mean(random_curves, axis=0))
        random_auc.append(auc(curves["random"][-1]))
        for name, maps in trained.items():
            curve = deletion_curve(model, inputs[i : i + 1], predicted[i], salient_first(maps[i], rng), args.steps)
            curves[name].append(curve)
            saliency_auc[name].append(auc(curve))
    random_auc = np.asarray(random_auc)
    deletion = {
        name: {
            "auc_salient_first": stats(v),
            "auc_random": stats(random_auc),
            "difference": paired_difference(np.asarray(v), random_auc),
            "salient_below_random": float(np.mean(np.asarray(v) < random_auc)),
            "mean_curve": np.mean(curves[name], axis=0).round(5).tolist(),
            "per_image_auc": np.round(v, 5).tolist(),
        }
        for name, v in saliency_auc.items()
    }
    # how much a map depends on the image at all: each image's trained map against the next image's
    between = {name: stats(spearman_rows(maps, np.roll(maps, 1, axis=0))) for name, maps in trained.items()}
    return {
        "checkpoint": str(checkpoint),
        "model": info.model_name,
        "images": len(samples),
        "sample_accuracy": float(np.mean(np.asarray(predicted) == np.asarray(labels))),
        "randomisation_spearman": randomisation,
        "between_images_spearman": between,
        "deletion": deletion,
        "random_mean_curve": np.mean(curves["random"], axis=0).round(5).tolist(),
        "random_per_image_auc": random_auc.round(5).tolist(),
    }


def fmt(s: dict, key: str = "mean") -> str:
    return "n/a" if s[key] is None else f"{s[key]:.3f} ± {s['std']:.3f}" if s["std"] is not None else f"{s[key]:.3f}"


def markdown(results: dict) -> str:
    lines = [
        "| model | map | Spearman ρ, whole net randomised | mean abs ρ | ρ, heads randomised | ρ between two "
        "images | deletion AUC salient-first | deletion AUC random | Δ AUC [95% CI] | Wilcoxon p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for role, r in results["models"].items():
        for name, d in r["deletion"].items():
            steps, diff = r["randomisation_spearman"][name], d["difference"]
            low, high = diff["ci95"]
            undefined = steps["all"]["undefined"]
            lines.append(
                f"| {role} ({r['model']}) | {name} | {fmt(steps['all'])}"
                + (f" ({undefined} undefined)" if undefined else "")
                + f" | {steps['all']['mean_abs']:.3f} | {fmt(steps['heads'])} | "
                f"{fmt(r['between_images_spearman'][name])} | {fmt(d['auc_salient_first'])} | "
                f"{fmt(d['auc_random'])} | {diff['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"
                f" | {diff['wilcoxon_p']:.2g} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("/work/shared_runs/brain32"))
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/brain_tumor_mri/Testing"))
    parser.add_argument("--per-class", type=int, default=25)
    parser.add_argument("--steps", type=int, default=16, help="deletion steps")
    parser.add_argument("--random-orders", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    samples = sample_images(args.data, args.per_class, args.seed)
    start = time.perf_counter()
    results = {
        "command": "python benchmarks/explain_sanity.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "data": str(args.data),
        "images": [str(p) for p, _ in samples],
        "removed_pixel_value": "0 after normalisation (the normalisation mean)",
        "randomisation": "cascading from the top, timm's initialisation, seeded; 'all' = whole network",
        "models": {},
    }
    for role in ROLES:
        results["models"][role] = check_model(args.runs / role / "best.safetensors", samples, args)
        print(f"{role}: done after {time.perf_counter() - start:.0f} s", flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["table"] = markdown(results)
    print(results["table"])
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2))
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
