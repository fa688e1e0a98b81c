import pytest
import timm
import torch

from hdkd import count_flops, count_params
from hdkd.models.hdkd import CBAM


@pytest.mark.parametrize(
    "name,classes,expected",
    [
        ("hdkd_teacher", 7, 3_948_677),
        ("hdkd_student", 7, 3_724_977),
        ("hdkd", 7, 3_727_288),
        ("hdkd_teacher", 4, 3_948_290),
        ("hdkd_student", 4, 3_724_206),
        ("hdkd", 4, 3_725_746),
        ("hdkd_teacher", 2, 3_948_032),
        ("hdkd_student", 2, 3_723_692),
        ("hdkd", 2, 3_724_718),
    ],
)
def test_parameter_counts_match_spec(name, classes, expected):
    assert count_params(timm.create_model(name, num_classes=classes)) == expected


@pytest.mark.parametrize("name,gflops", [("hdkd_teacher", 11.40), ("hdkd_student", 4.04), ("hdkd", 4.05)])
def test_flops_match_spec(name, gflops):
    assert count_flops(timm.create_model(name, num_classes=4), 224) / 1e9 == pytest.approx(gflops, abs=0.006)


def test_hdkd_returns_two_logits_in_training_and_their_average_in_eval():
    torch.manual_seed(0)
    model = timm.create_model("hdkd", num_classes=3, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    cls, dist = model(x)
    assert cls.shape == dist.shape == (2, 3)
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(model.head(feats[:, 0]), model.head_dist(feats[:, 1]))


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd_student", "hdkd"])
def test_stage_maps_share_shapes_and_feature_info(name):
    model = timm.create_model(name, num_classes=4, img_size=64, in_chans=1).eval()
    maps = model.forward_intermediates(torch.zeros(1, 1, 64, 64), intermediates_only=True)
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (96, 16, 16), (192, 8, 8)]
    assert [f["num_chs"] for f in model.feature_info] == [64, 96, 192]
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8]
    feats = timm.create_model(name, num_classes=4, img_size=64, features_only=True)
    assert [tuple(f.shape[1:]) for f in feats(torch.zeros(1, 3, 64, 64))] == [(64, 32, 32), (96, 16, 16), (192, 8, 8)]


def test_configurable_architecture():
    model = timm.create_model(
        "hdkd",
        num_classes=5,
        img_size=128,
        stem_stride=4,
        block="mbconv",
        dflt_depth=1,
        dflt_heads=4,
        depths=[1, 1, 2],
        widths=[32, 48, 96],
    )
    assert len(model.blocks) == 1 and model.blocks[0].attn.num_heads == 4
    assert model.pos_embed.shape == (1, (128 // 32) ** 2 + 2, 256)
    assert [len(s) for s in model.stages] == [1, 1, 2]
    assert not any(isinstance(m, CBAM) for m in model.modules())
    model.eval()
    assert model(torch.zeros(2, 3, 128, 128)).shape == (2, 5)
    with pytest.raises(ValueError, match="multiple of 16"):
        timm.create_model("hdkd", img_size=40)


def test_pretrained_cfg_has_normalisation_and_input_size():
    cfg = timm.create_model("hdkd_teacher").pretrained_cfg
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406)) and cfg["input_size"] == (3, 224, 224)


def test_mbconv_se_width_follows_input_channels():
    model = timm.create_model("hdkd_teacher", block="mbconv", img_size=32)
    se = model.stages[1][0].attn  # cin 64, hidden 256
    assert se.fc1.weight.shape == (16, 256)
    se = model.stages[2][1].attn  # cin 192, hidden 768
    assert se.fc1.weight.shape == (48, 768)
