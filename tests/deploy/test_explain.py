"""hdkd explain: Grad-CAM and attention rollout maps, checked against independent computations; the command."""

from __future__ import annotations

import argparse
import copy
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import hdkd.models  # noqa: F401  (registers the HDKD models with timm)
from hdkd.commands.explain import register
from hdkd.deploy.explain import (
    attention_matrices,
    explain_array,
    explain_image,
    gradcam_layer,
    gradcam_maps,
    rollout,
    rollout_maps,
)
from hdkd.errors import ConfigError, HDKDError
from hdkd.evaluation.inference import Classifier, TorchClassifier, to_input
from hdkd.models import save_checkpoint
from hdkd.reporting.overlay import render_overlay

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
TINY = dict(num_classes=4, img_size=32, in_chans=3, widths=[16, 24, 32])
TINY_DFLT = dict(TINY, embed_dim=16, dflt_depth=2, dflt_heads=2, dflt_head_dim=8, dflt_mlp_dim=32)
ARGS = {"hdkd_teacher": dict(TINY, depths=[1, 1, 2]), "hdkd_student": TINY_DFLT, "hdkd": TINY_DFLT}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for i, (name, args) in enumerate(ARGS.items()):
        torch.manual_seed(i)
        model = timm.create_model(name, **args)
        paths[name] = save_checkpoint(
            model,
            folder / f"{name}.safetensors",
            name,
            args,
            extra={"class_names": CLASSES, "img_size": 32, "in_chans": 3, "role": name},
        )
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(2)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(folder / f"scan{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def image32(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def classifier(checkpoints, name) -> TorchClassifier:
    return TorchClassifier.from_checkpoint(checkpoints[name])


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["explain", *map(str, argv)])
    return args.func(args)


# ------------------------------------------------------------------------------------------------------- the maps
@pytest.mark.parametrize(
    "name,keys",
    [
        ("hdkd_teacher", {"gradcam"}),
        ("hdkd_student", {"gradcam", "rollout"}),
        ("hdkd", {"gradcam", "rollout", "rollout_cls", "rollout_dist"}),
    ],
)
def test_maps_are_in_unit_range_with_the_image_shape(checkpoints, name, keys):
    clf = classifier(checkpoints, name)
    maps = explain_array(clf, clf.info, image32())
    assert set(maps) == keys
    for m in maps.values():
        assert m.shape == (32, 32) and m.dtype == np.float32
        assert m.min() >= 0 and m.max() <= 1 and m.max() - m.min() > 0.5  # scaled, not constant


def test_prediction_and_probabilities_match_the_classifier(checkpoints):
    clf = classifier(checkpoints, "hdkd")
    image = image32(3)
    result = explain_image(clf, clf.info, image)
    probs = clf.probabilities([image])[0]
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-6)
    assert result.predicted == result.target == int(probs.argmax())


def test_target_class_changes_gradcam_but_not_rollout(checkpoints):
    clf = classifier(checkpoints, "hdkd")
    image = image32(1)
    predicted = explain_image(clf, clf.info, image)
    by_name = explain_image(clf, clf.info, image, target=CLASSES[predicted.predicted])
    np.testing.assert_array_equal(predicted.maps["gradcam"], by_name.maps["gradcam"])
    other = (predicted.predicted + 1) % 4
    changed = explain_image(clf, clf.info, image, target=CLASSES[other])
    assert changed.target == other and changed.predicted == predicted.predicted
    assert np.abs(changed.maps["gradcam"] - predicted.maps["gradcam"]).max() > 0.1
    np.testing.assert_array_equal(changed.maps["rollout"], predicted.maps["rollout"])  # rollout is class-agnostic


def _pil_upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (half-pixel) upsampling by PIL, then min-max to [0, 1]: independent of torch and OpenCV."""
    up = np.asarray(Image.fromarray(low.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    return (up - up.min()) / (up.max() - up.min())


def _logits_and_stage3(model, inputs):
    captured = []
    hook = model.stages[-1].register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        return model(inputs.clone().requires_grad_(True)), captured[0]
    finally:
        hook.remove()


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd"])
def test_gradcam_equals_the_definition_computed_with_autograd(checkpoints, name):
    """Grad-CAM by hand: channel weights = spatial mean of d(logit of the class)/d(stage-3 map), ReLU of the
    weighted sum, upsampled; for hdkd the logit is the average of its two heads, as the model returns in eval."""
    clf = classifier(checkpoints, name)
    model = clf.model
    inputs = to_input(image32(2)[None], clf.info)
    for target in range(4):
        logits, activation = _logits_and_stage3(model, inputs)
        (grad,) = torch.autograd.grad(logits[0, target], activation)
        if name == "hdkd":  # the explained score really is the averaged logits
            feats = model.forward_features(inputs)
            np.testing.assert_allclose(
                logits[0].detach(), (model.head(feats[:, 0]) + model.head_dist(feats[:, 1]))[0].detach() / 2, atol=1e-5
            )
        weights = grad.mean((2, 3), keepdim=True)
        cam = torch.relu((weights * activation).sum(1))[0].detach().double().numpy()
        assert cam.shape == (4, 4)
        if cam.max() == cam.min():
            continue
        expected = _pil_upsample((cam - cam.min()) / (cam.max() - cam.min()), 32)
        got = gradcam_maps(model, inputs, [target])[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_gradcam_layer_is_the_last_convolutional_stage(checkpoints):
    model = classifier(checkpoints, "hdkd").model
    assert gradcam_layer(model) is model.stages[-1]
    resnet = timm.create_model("resnet18", num_classes=4)
    assert gradcam_layer(resnet) is resnet.layer4


def _reference_rollout_float64(model, inputs):
    """An independent forward pass in float64 that writes every softmax attention out explicitly, checked against
    the model's own output, and the rollout as a plain loop of matrix products."""
    model = copy.deepcopy(model).double().eval()
    x = model.patch_embed(model.stages(inputs.double()))
    x = torch.cat([model.cls_token, model.dist_token, x], dim=1) + model.pos_embed
    attentions = []
    for blk in model.blocks:
        h = blk.norm(x)
        w_q, w_k, w_v = blk.attn.qkv.weight.chunk(3)
        heads = []
        outs = []
        for i in range(blk.attn.num_heads):
            sl = slice(i * blk.attn.head_dim, (i + 1) * blk.attn.head_dim)
            q, k, v = h @ w_q[sl].T, h @ w_k[sl].T, h @ w_v[sl].T
            a = torch.softmax(q @ k.transpose(-1, -2) / np.sqrt(blk.attn.head_dim), dim=-1)
            heads.append(a[0])
            outs.append(a @ v)
        x = x + blk.attn.proj(torch.cat(outs, dim=-1))
        x = x + blk.mlp(x)
        attentions.append(torch.stack(heads).numpy())
    np.testing.assert_allclose(
        model.norm(x).detach().numpy(), model.forward_features(inputs.double()).detach().numpy(), atol=1e-10
    )
    n = attentions[0].shape[-1]
    rolled = np.eye(n)
    for a in attentions:
        rolled = (0.5 * a.mean(0) + 0.5 * np.eye(n)) @ rolled
    return rolled


def test_rollout_equals_an_independent_float64_reference(checkpoints):
    clf = classifier(checkpoints, "hdkd")
    inputs = to_input(image32(4)[None], clf.info)
    with torch.no_grad():
        expected = _reference_rollout_float64(clf.model, inputs)
    got = rollout(attention_matrices(clf.model, inputs))[0].numpy()
    assert got.shape == (6, 6)  # 2 prefix tokens + 2 x 2 patches
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-9)
    maps = rollout_maps(clf.model, inputs)
    for name, row in [
        ("rollout_cls", expected[0, 2:]),
        ("rollout_dist", expected[1, 2:]),
        ("rollout", expected[:2, 2:].mean(0)),
    ]:
        np.testing.assert_allclose(maps[name][0], _pil_upsample(row.reshape(2, 2), 32), atol=1e-4)


def test_rollout_of_hand_built_attention_multiplies_the_last_block_on_the_left():
    a1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # tokens 1 and 2 swap
    a2 = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # token 0 reads token 1
    two_heads = torch.stack([a2, torch.eye(3)])[None]  # heads averaged: 0.5 a2 + 0.5 I
    r1, r2 = 0.5 * a1 + 0.5 * torch.eye(3), 0.5 * (0.5 * a2 + 0.5 * torch.eye(3)) + 0.5 * torch.eye(3)
    got = rollout([a1[None], two_heads])[0]
    torch.testing.assert_close(got, (r2 @ r1).double())
    # token 0: 3/4 of itself, 1/4 via token 1, which block 1 had half from token 2
    torch.testing.assert_close(got[0], torch.tensor([0.75, 0.125, 0.125], dtype=torch.float64))
    assert not torch.allclose(got, (r1 @ r2).double())


# -------------------------------------------------------------------------------------------------- errors, ONNX
def test_unknown_target_is_an_error_listing_the_classes(checkpoints, images, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(HDKDError, match="unknown class 'tumour'.*glioma, meningioma, notumor, pituitary"):
        run_cli([checkpoints["hdkd"], images[0], "-o", out, "--target", "tumour"])
    assert not out.exists()
    clf = classifier(checkpoints, "hdkd")
    with pytest.raises(ConfigError, match="--target"):
        explain_array(clf, clf.info, image32(), target="tumour")


def test_onnx_models_are_refused(checkpoints, images, tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not needed: refused by name before loading")
    with pytest.raises(ConfigError, match="ONNX export cannot be explained.*safetensors"):
        run_cli([onnx, images[0], "-o", tmp_path / "out"])

    class NotTorch(Classifier):
        info = classifier(checkpoints, "hdkd").info

        def logits(self, inputs):
            return np.zeros((len(inputs), 4))

    with pytest.raises(ConfigError, match="PyTorch model"):
        explain_array(NotTorch(), NotTorch.info, image32())


def test_rollout_for_the_teacher_is_refused(checkpoints, images, tmp_path):
    with pytest.raises(ConfigError, match="--method rollout.*hdkd_teacher"):
        run_cli([checkpoints["hdkd_teacher"], images[0], "-o", tmp_path, "--method", "rollout"])


# ----------------------------------------------------------------------------------------------------- the files
def test_overlay_png_shows_the_map(checkpoints):
    image = np.full((32, 32), 128, dtype=np.uint8)
    saliency = np.zeros((32, 32), dtype=np.float32)
    saliency[:, 16:] = 1.0
    png = Image.open(io.BytesIO(render_overlay(image, saliency)))
    assert png.format == "PNG" and png.size == (256, 256)
    rgb = np.asarray(png.convert("RGB")).astype(int)
    cold, hot = rgb[128, 20], rgb[128, 236]
    assert cold[2] > cold[0] + 50 and hot[0] > hot[2] + 50  # jet: blue where the map is 0, red where it is 1


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd_student", "hdkd"])
def test_command_writes_decodable_overlays_and_explanations_json(checkpoints, images, tmp_path, name):
    out = tmp_path / "out"
    assert run_cli([checkpoints[name], *images, "-o", out, "--device", "cpu"]) == 0
    report = json.loads((out / "explanations.json").read_text())
    assert report["model"] == name and report["class_names"] == CLASSES
    clf = classifier(checkpoints, name)
    expected_files = {
        "hdkd_teacher": {"gradcam"},
        "hdkd_student": {"gradcam", "rollout"},
        "hdkd": {"gradcam", "rollout", "rollout_cls", "rollout_dist"},
    }[name]
    for path, entry in zip(images, report["images"], strict=True):
        probs = clf.probabilities([np.array(Image.open(path).resize((32, 32), Image.BILINEAR))])[0]
        assert entry["predicted"] == entry["target"] == CLASSES[int(probs.argmax())]
        assert entry["probabilities"] == pytest.approx(dict(zip(CLASSES, probs, strict=True)), abs=1e-5)
        assert set(entry["files"]) == expected_files and entry["error"] is None
        for filename in entry["files"].values():
            with Image.open(out / filename) as png:
                png.load()
                assert png.format == "PNG" and min(png.size) >= 256
    assert not list(out.glob(".*.tmp"))


def test_one_unreadable_image_gets_an_error_entry_and_exit_status_1(checkpoints, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    assert run_cli([checkpoints["hdkd_student"], bad, images[0], "-o", out, "--target", "notumor"]) == 1
    entries = json.loads((out / "explanations.json").read_text())["images"]
    assert "broken.jpg" in entries[0]["error"] and entries[1]["target"] == "notumor"
    assert (out / "scan0_gradcam.png").is_file() and not list(out.glob("broken*.png"))


def test_images_with_the_same_name_do_not_overwrite_each_other(checkpoints, images, tmp_path):
    twin = tmp_path / "other" / images[0].name
    twin.parent.mkdir()
    twin.write_bytes(images[1].read_bytes())
    out = tmp_path / "out"
    run_cli([checkpoints["hdkd_teacher"], images[0], twin, "-o", out])
    files = [e["files"]["gradcam"] for e in json.loads((out / "explanations.json").read_text())["images"]]
    assert files == ["scan0_gradcam.png", "scan0-2_gradcam.png"]
    assert (out / files[0]).read_bytes() != (out / files[1]).read_bytes()


def test_interpolation_helper_matches_torch_bilinear():
    """The tests' PIL upsampling is the same half-pixel bilinear the library (OpenCV) and rollout (torch) use."""
    low = np.random.default_rng(0).random((4, 4))
    torch_up = F.interpolate(torch.from_numpy(low)[None, None], size=(32, 32), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()
    np.testing.assert_allclose(_pil_upsample(low, 32), (torch_up - torch_up.min()) / np.ptp(torch_up), atol=1e-5)


def test_concurrent_explanations_give_the_serial_maps(checkpoints):
    """The web app explains from several threads; each call's hooks must see only its own forward passes."""
    clf = classifier(checkpoints, "hdkd")
    images_ = [image32(10 + i) for i in range(6)]
    serial = [explain_array(clf, clf.info, im) for im in images_]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(lambda im: explain_array(clf, clf.info, im), images_))
    for s, p in zip(serial, parallel, strict=True):
        for name in s:
            np.testing.assert_array_equal(s[name], p[name])


def test_command_methods_match_the_explain_module():
    from hdkd.commands.explain import METHODS as command_methods
    from hdkd.deploy.explain import METHODS

    assert command_methods == METHODS
