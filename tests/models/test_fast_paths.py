"""The fast formulations (matmul 1x1 convs, F.linear CBAM MLP, channels_last pooling, max with or without indices)
compute the authors' model: against a float64 reference, in both memory formats, on both conv paths, for eval
outputs and for training gradients; and the authors' checkpoints reproduce in channels_last and on the inference
path (BN folded, channels_last, no autograd)."""

import copy
import json
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from hdkd import HDKDLoss, load_checkpoint
from hdkd.evaluation.inference import prepare_for_inference
from hdkd.models.hdkd import MBCSA, StemBlock

MODEL_MODULE = sys.modules["hdkd.models.hdkd"]  # `hdkd.models.hdkd` the attribute is the registered function
CL = torch.channels_last


def _with_stats(name, seed):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=3, img_size=32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
    return model


def _rel(a, b, floor):
    """Relative error; gradients that are zero in exact arithmetic (a BN's bias in front of another BN) are
    compared against `floor` instead."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(floor)).item()


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    sum(F.cross_entropy(o, y) for o in (out if isinstance(out, tuple) else (out,))).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("path", ["conv2d", "onednn", "matmul"])
def test_fast_paths_match_float64_reference(monkeypatch, name, channels_last, path):
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2, 0])
    reference = _with_stats(name, 0).double()
    with torch.no_grad():
        ref_eval = reference.eval()(x.double())
    ref_grads = _grads(reference.train(), x.double(), y)

    monkeypatch.setattr(MODEL_MODULE, "_conv_leaves_onednn", lambda t: path != "conv2d")
    if path == "onednn":  # every DFLT linear on oneDNN, however few tokens a 32 px input has, on any CPU
        monkeypatch.setattr(MODEL_MODULE, "_MKL_IS_NATIVE", False)
        monkeypatch.setattr(MODEL_MODULE, "_ONEDNN_LINEAR_MIN_ROWS", 1)
        monkeypatch.setattr(MODEL_MODULE, "_ONEDNN_BACKWARD_MIN_ROWS", 16)  # the patch embedding's 16 rows
    if path == "matmul":  # the fallback where PyTorch has no oneDNN
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model = _with_stats(name, 0)
    if channels_last:
        model, x = model.to(memory_format=CL), x.contiguous(memory_format=CL)
    with torch.no_grad():
        out = model.eval()(x)
    assert (out.double() - ref_eval).abs().max() <= 1e-4 * ref_eval.abs().max()
    grads = _grads(model.train(), x, y)
    floor = 1e-4 * torch.sqrt(sum((g**2).sum() for g in ref_grads.values())).item()
    for k, g in grads.items():
        assert _rel(g, ref_grads[k], floor) <= 1e-3, k


@pytest.mark.parametrize("shape", [(7, 12), (17, 12), (67, 12), (2, 9, 12), (4, 8, 12), (3, 2, 5, 12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("function", ["onednn_linear", "onednn_linear_with_grad"])
def test_onednn_linear_equals_linear_with_gradients(shape, bias, function):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(10, 12, generator=g, dtype=torch.float64)
    b = torch.randn(10, generator=g, dtype=torch.float64) if bias else None
    grad_out = torch.randn(*shape[:-1], 10, generator=g, dtype=torch.float64)
    leaves = [t.float().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    ref_leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    out = getattr(MODEL_MODULE, function)(*leaves, *(() if bias else (None,)))
    ref = F.linear(*ref_leaves, *(() if bias else (None,)))
    assert out.shape == ref.shape
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    grads = torch.autograd.grad(out, leaves, grad_out.float())
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out)
    for got, want in zip(grads, ref_grads):
        assert _rel(got, want, 1e-12) <= 1e-5


def test_linear_runs_on_onednn_only_for_many_fp32_rows(monkeypatch):
    monkeypatch.setattr(MODEL_MODULE, "_MKL_IS_NATIVE", False)  # a CPU where MKL's GEMM is the slower one
    calls = []
    monkeypatch.setattr(MODEL_MODULE, "onednn_linear", lambda *a: calls.append(a[0].shape) or F.linear(*a))
    layer = MODEL_MODULE.Linear(8, 4)
    layer(torch.randn(2, 9, 8))  # 18 rows: oneDNN
    layer(torch.randn(3, 8))  # a head's few rows: BLAS
    layer.double()(torch.randn(2, 9, 8, dtype=torch.float64))  # not fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.float()(torch.randn(2, 9, 8))  # bf16 linears are on oneDNN already
    assert calls == [torch.Size([2, 9, 8])]
    with_grad = []
    monkeypatch.setattr(
        MODEL_MODULE, "onednn_linear_with_grad", lambda *a: with_grad.append(a[0].shape) or F.linear(*a)
    )
    layer(torch.randn(16, 8, 8))  # 128 rows, the weight needs a gradient: the backward on oneDNN too
    with torch.no_grad():
        layer(torch.randn(16, 8, 8))  # no gradient: the batch-1 view
    layer(torch.randn(2, 9, 8))  # too few rows for it
    assert with_grad == [torch.Size([16, 8, 8])] and len(calls) == 3, (with_grad, calls)
    traced = torch.jit.trace(MODEL_MODULE.Linear(8, 4), torch.randn(2, 9, 8), check_trace=False)
    assert "aten::linear" in str(traced.graph)  # tracing (ONNX export) sees a plain linear
    assert len(calls) == 3 and len(with_grad) == 1, calls
    monkeypatch.setattr(MODEL_MODULE, "_MKL_IS_NATIVE", True)  # an Intel CPU: MKL for every linear
    layer(torch.randn(16, 8, 8))
    with torch.no_grad():
        layer(torch.randn(2, 9, 8))
    assert len(calls) == 3 and len(with_grad) == 1, calls


def test_pointwise_matmul_equals_conv_in_both_formats():
    torch.manual_seed(0)
    conv = MODEL_MODULE.PointwiseConv(6, 5, bias=True)
    x = torch.randn(2, 6, 7, 7)
    expected = F.conv2d(x, conv.weight, conv.bias)
    for inp in (x, x.contiguous(memory_format=CL)):
        out = MODEL_MODULE.pointwise(inp, conv.weight, conv.bias)
        assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-5)
        assert out.is_contiguous(memory_format=CL) == MODEL_MODULE.is_channels_last(inp)


def _official(fixtures):
    teacher = load_checkpoint(timm.create_model("hdkd_teacher", num_classes=4), fixtures / "teacher_4cls_224.pth")
    student = load_checkpoint(timm.create_model("hdkd", num_classes=4), fixtures / "hdkd_4cls_224.pth")
    return teacher, student, torch.load(fixtures / "batch_and_outputs.pt", weights_only=True)


def test_official_outputs_in_channels_last_and_on_the_inference_path(official_fixtures):
    teacher, student, ref = _official(official_fixtures)
    expected = {
        "teacher": ref["teacher_logits_eval"],
        "student": (ref["hdkd_cls_logits_eval"] + ref["hdkd_dist_logits_eval"]) / 2,
    }
    x = ref["x"].contiguous(memory_format=CL)
    for name, model in (("teacher", teacher), ("student", student)):
        plain = model.eval().to(memory_format=CL)
        with torch.no_grad():
            assert (plain(x) - expected[name]).abs().max() < 1e-4, name
        fast = prepare_for_inference(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        assert not any(p.requires_grad for p in fast.parameters()) and not fast.training
        with torch.inference_mode():
            assert (fast(ref["x"]) - expected[name]).abs().max() < 1e-4, name


def test_official_loss_and_gradient_in_channels_last(official_fixtures):
    expected = json.loads((official_fixtures / "expected_losses.json").read_text())["loss_soft"]
    teacher, student, ref = _official(official_fixtures)
    teacher, student = teacher.to(memory_format=CL), student.to(memory_format=CL).train()
    criterion = HDKDLoss(teacher, alpha=0.5, tau=1.0, lam=10.0, kd="soft", beta=1.0, fold_teacher_bn=True)
    out = criterion(student, ref["x"].contiguous(memory_format=CL), ref["y"])
    out.total.backward()
    assert out.total.item() == pytest.approx(expected["total"], rel=1e-4)
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in student.parameters())).item()
    assert norm == pytest.approx(expected["grad_l2_norm"], rel=1e-3)


def test_flops_count_the_onednn_pointwise_convs(monkeypatch):
    from hdkd import count_flops

    model = timm.create_model("hdkd", num_classes=4)
    monkeypatch.setattr(MODEL_MODULE, "_conv_leaves_onednn", lambda t: False)
    via_conv2d = count_flops(model, 224)
    monkeypatch.setattr(MODEL_MODULE, "_conv_leaves_onednn", lambda t: True)
    assert count_flops(model, 224) == via_conv2d and via_conv2d / 1e9 == pytest.approx(4.05, abs=0.006)


def test_tracing_sees_plain_convolutions(monkeypatch):
    """ONNX export traces the model; it has no oneDNN operator, so tracing must see aten::_convolution."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # where PointwiseConv would call oneDNN directly
    model = timm.create_model("hdkd", num_classes=3, img_size=32).eval()
    with torch.no_grad():
        graph = str(torch.jit.trace(model, torch.zeros(1, 3, 32, 32)).inlined_graph)
    assert "mkldnn_convolution" not in graph and "aten::_convolution" in graph
    assert "_convolution_pointwise" not in graph  # nor the frozen blocks' fused convolutions


@pytest.mark.skipif(MODEL_MODULE._ONEDNN_POINTWISE is None, reason="this PyTorch has no oneDNN pointwise conv")
@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd"])
def test_frozen_blocks_fuse_batchnorm_and_gelu_into_onednn_convolutions(monkeypatch, name):
    """In eval mode without autograd every conv of the stages is one oneDNN call with its BNs folded in and its
    GELU as a post-op; the logits and stage maps equal the modules run one by one, and the maps come back in the
    input's layout. With autograd (Grad-CAM) or in training the modules run as written."""
    fused = []
    pointwise = MODEL_MODULE._ONEDNN_POINTWISE
    monkeypatch.setattr(MODEL_MODULE, "_ONEDNN_POINTWISE", lambda *a: fused.append(a[7]) or pointwise(*a))
    model = _with_stats(name, 1).eval()
    stems, blocks = (sum(isinstance(m, kind) for m in model.modules()) for kind in (StemBlock, MBCSA))
    convs = stems + 3 * blocks  # conv -> BN -> GELU; conv_expand and conv_dw with GELU, conv_project without
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for inputs in (x, x.contiguous(memory_format=CL)):
        fused.clear()
        with torch.no_grad():
            logits, maps = model(inputs, return_stages=True)
        assert len(fused) == convs and fused.count("gelu") == convs - blocks
        assert all(MODEL_MODULE.is_channels_last(m) == MODEL_MODULE.is_channels_last(inputs) for m in maps)
        monkeypatch.setattr(MODEL_MODULE, "_frozen_on_onednn", lambda *a: False)
        with torch.no_grad():
            ref_logits, ref_maps = model(inputs, return_stages=True)
        monkeypatch.undo()
        monkeypatch.setattr(MODEL_MODULE, "_ONEDNN_POINTWISE", lambda *a: fused.append(a[7]) or pointwise(*a))
        assert (logits - ref_logits).abs().max() <= 1e-5 * ref_logits.abs().max()
        for got, want in zip(maps, ref_maps):
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    fused.clear()
    model(x).sum().backward()  # eval mode, autograd on
    model.train()(x)
    assert fused == []


@pytest.mark.skipif(MODEL_MODULE._ONEDNN_POINTWISE is None, reason="this PyTorch has no oneDNN pointwise conv")
def test_frozen_blocks_fuse_under_bf16_autocast(monkeypatch):
    """The frozen teacher of a bf16 training step: fused convolutions in bf16, logits within bf16 rounding of the
    modules run one by one under the same autocast."""
    fused = []
    pointwise = MODEL_MODULE._ONEDNN_POINTWISE
    monkeypatch.setattr(MODEL_MODULE, "_ONEDNN_POINTWISE", lambda *a: fused.append(a[0].dtype) or pointwise(*a))
    model = _with_stats("hdkd_teacher", 1).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x).float()
        monkeypatch.setattr(MODEL_MODULE, "_frozen_on_onednn", lambda *a: False)
        ref = model(x).float()
    if MODEL_MODULE._ONEDNN_BF16:
        assert fused and set(fused) == {torch.bfloat16}
    else:  # a CPU without oneDNN bf16 convolutions (AVX2 only): the plain modules, which autocast runs as it can
        assert not fused
    assert (logits - ref).abs().max() <= 0.05 * ref.abs().max()


def test_gelu_on_channels_last_maps_is_gelu():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 4, generator=g).contiguous(memory_format=CL).requires_grad_()
    grad_out = torch.randn(2, 6, 5, 4, generator=g)
    x64 = x.detach().double().requires_grad_()
    out, ref = MODEL_MODULE.GELU()(x), F.gelu(x64)
    assert out.is_contiguous(memory_format=CL) and (out.double() - ref).abs().max() < 1e-6
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (ref_grad,) = torch.autograd.grad(ref, x64, grad_out.double())
    assert (grad.double() - ref_grad).abs().max() < 1e-6


def test_cpu_autocast_attention_is_softmax_attention_written_out(monkeypatch):
    """Under CPU bf16 autocast the DFLT attention runs softmax(q k^T / sqrt(d)) v written out (the fused bf16 CPU
    kernel is slower there); values and gradients match float64 SDPA within bf16 rounding, and fp32 keeps SDPA."""
    torch.manual_seed(0)
    attn = MODEL_MODULE.Attention(16, 2, 8)
    x = torch.randn(3, 6, 16)
    ref_attn = copy.deepcopy(attn).double()
    ref = ref_attn(x.double().requires_grad_())
    ref_grads = torch.autograd.grad(ref.sum(), list(ref_attn.parameters()))
    fused = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(MODEL_MODULE.F, "scaled_dot_product_attention", lambda *a: fused.append(1) or sdpa(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    grads = torch.autograd.grad(out.float().sum(), list(attn.parameters()))
    assert not fused and out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max() <= 3e-2 * ref.abs().max()
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r, 1e-6) <= 5e-2
    attn(x)
    assert fused == [1]  # fp32: the fused kernel, as the fixtures were checked with


@pytest.mark.parametrize("channels_last", [False, True])
def test_cbam_means_equal_mean_and_hand_back_a_broadcast_gradient(channels_last):
    """CBAM's average descriptors are sums divided afterwards: mean's values, and a backward that does not write a
    full-size copy (mean's divides one, in NCHW order, which made channels_last training mix layouts)."""
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(0))
    x = (x.contiguous(memory_format=CL) if channels_last else x).requires_grad_()
    for ours, mean, broadcast_dims in (
        (MODEL_MODULE.channel_mean, lambda t: t.mean(1, keepdim=True), (1,)),
        (MODEL_MODULE.spatial_mean, lambda t: t.mean((2, 3)), (2, 3)),
    ):
        out = ours(x)
        assert torch.allclose(out, mean(x), rtol=1e-6, atol=1e-7)
        (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
        assert all(grad.stride(d) == 0 for d in broadcast_dims), grad.stride()
        assert torch.allclose(grad, torch.autograd.grad(mean(x), x, torch.ones_like(out))[0])


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_max_gradient_is_torch_max_in_the_inputs_layout(channels_last):
    """Gradients go to the arg-max as torch.max routes them (ties included: one input gets it all), and come back
    in the input's layout (torch.max's own backward returns NCHW, which made channels_last backward ops mix)."""
    x = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(4))
    x[0, 1], x[0, 3] = x[0].max(0).values + 1, x[0].max(0).values + 1  # ties in every position of image 0
    if channels_last:
        x = x.contiguous(memory_format=CL)
    x = x.requires_grad_()
    grad_out = torch.randn(2, 1, 3, 4)
    (grad,) = torch.autograd.grad(MODEL_MODULE.channel_max(x), x, grad_out)
    (ref,) = torch.autograd.grad(x.max(1, keepdim=True).values, x, grad_out)
    assert torch.equal(grad, ref)
    assert MODEL_MODULE.is_channels_last(grad) == channels_last
