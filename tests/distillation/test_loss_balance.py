"""Issue 15: the variance-normalised feature term, the weighted terms and their gradient shares."""

import math

import numpy as np
import pytest
import timm
import torch

from hdkd import ConfigError, HDKDLoss, SupervisedLoss
from hdkd.distillation.losses import stage_distance
from hdkd.training.engine import EpochStats, gradient_shares, train_one_epoch


def _tiny(name, classes=3, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=classes, img_size=32)


def _pair():
    return _tiny("hdkd_teacher", seed=1).eval(), _tiny("hdkd", seed=2).train()


def test_variance_normalised_distance_is_mse_over_the_teacher_maps_population_variance():
    rng = np.random.default_rng(0)
    t = rng.normal(3.0, 2.5, size=(4, 6, 5, 5))
    s = rng.normal(0.0, 1.0, size=(4, 6, 5, 5))
    expected = np.mean((s - t) ** 2) / np.var(t)  # over the batch and every element, ddof=0
    got = stage_distance(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), "variance")
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(stage_distance(torch.tensor(s), torch.tensor(t), "none")) == pytest.approx(np.mean((s - t) ** 2))
    # scale-free: multiplying both maps by 100 leaves the normalised distance unchanged
    scaled = stage_distance(torch.tensor(100 * s), torch.tensor(100 * t), "variance")
    assert float(scaled) == pytest.approx(expected, rel=1e-6)


def test_variance_option_in_the_loss_and_a_bad_value_refused():
    teacher, student = _pair()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    raw = HDKDLoss(teacher, lam=1.0)(student, x, y)
    torch.manual_seed(0)
    var = HDKDLoss(teacher, lam=1.0, feature_norm="variance")(student, x, y)
    assert var.ce == pytest.approx(raw.ce) and var.kd == pytest.approx(raw.kd)
    assert var.feature != pytest.approx(raw.feature)
    with pytest.raises(ConfigError, match="distill.feature_norm"):
        HDKDLoss(teacher, feature_norm="cosine")


@pytest.mark.parametrize("kd,lam", [("soft", 10.0), ("hard", 0.1), ("none", 1.0), ("soft", 0.0)])
def test_weighted_terms_sum_to_the_total(kd, lam):
    teacher, student = _pair()
    out = HDKDLoss(teacher, alpha=0.3, lam=lam, kd=kd)(student, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert float(sum(out.terms.values()).detach()) == pytest.approx(float(out.total.detach()), rel=1e-6)
    assert ("feature" in out.terms) == (lam > 0)
    assert ("kd" in out.terms) == (kd != "none")


def test_gradient_shares_match_a_hand_computation():
    """L = a * w.x + b * (w.w) / 2 on a linear 'model': d/dw = a x and b w, so the norms are |a| ||x|| and |b| ||w||."""
    w = torch.tensor([3.0, -4.0], requires_grad=True)  # ||w|| = 5
    x = torch.tensor([1.0, 2.0])  # ||x|| = sqrt(5)
    a, b = 2.0, 0.5
    terms = {"ce": a * (w * x).sum(), "kd": b * (w * w).sum() / 2, "feature": 0.0 * (w * w).sum()}
    shares = gradient_shares(terms, [w])
    n_ce, n_kd = a * math.sqrt(5.0), b * 5.0
    assert shares["ce"] == pytest.approx(n_ce / (n_ce + n_kd))
    assert shares["kd"] == pytest.approx(n_kd / (n_ce + n_kd))
    assert shares["feature"] == 0.0  # weight 0: no gradient
    assert sum(shares.values()) == pytest.approx(1.0)
    assert w.grad is None  # measuring does not touch .grad


def test_gradient_shares_on_the_hdkd_loss_sum_to_one_and_a_zero_weight_has_none():
    teacher, student = _pair()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    params = [p for p in student.parameters() if p.requires_grad]
    out = HDKDLoss(teacher, lam=10.0)(student, x, y)
    shares = gradient_shares(out.terms, params)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(v > 0 for v in shares.values())
    # the shares against separate backward passes of each term
    norms = {}
    for name, term in out.terms.items():
        student.zero_grad()
        term.backward(retain_graph=True)
        norms[name] = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))
    for name in norms:
        assert shares[name] == pytest.approx(norms[name] / sum(norms.values()), rel=1e-5)
    alpha0 = HDKDLoss(teacher, alpha=0.0, lam=10.0)(student, x, y)  # the KD term weighted by 0
    assert gradient_shares(alpha0.terms, params)["kd"] == 0.0
    logit_only = HDKDLoss(teacher, lam=0.0)(student, x, y)  # lambda 0: no feature term at all
    assert gradient_shares(logit_only.terms, params)["feature"] == 0.0
    alone = SupervisedLoss()(student, x, y)
    assert gradient_shares(alone.terms, params) == {"ce": 1.0, "kd": 0.0, "feature": 0.0}


def test_epoch_logs_the_mean_share_of_the_measured_steps_and_nothing_when_off(monkeypatch):
    teacher, student = _pair()
    data = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    criterion = HDKDLoss(teacher, lam=10.0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)  # lr 0: the same weights at every step
    measured = []
    original = gradient_shares

    def spy(terms, params):
        measured.append(original(terms, params))
        return measured[-1]

    monkeypatch.setattr("hdkd.training.engine.gradient_shares", spy)
    stats = train_one_epoch(student, criterion, data, optimizer, torch.device("cpu"), progress=False,
                            grad_share_every=2)  # fmt: skip
    monkeypatch.undo()
    assert len(measured) == 2  # steps 0 and 2
    for term in ("ce", "kd", "feature"):
        assert stats[f"grad_share_{term}"] == pytest.approx(np.mean([m[term] for m in measured]))
    assert sum(stats[f"grad_share_{t}"] for t in ("ce", "kd", "feature")) == pytest.approx(1.0)
    off = train_one_epoch(student, criterion, data, optimizer, torch.device("cpu"), progress=False)
    assert not any(k.startswith("grad_share") for k in off)
    assert EpochStats().result().keys() == off.keys()


def test_measuring_the_shares_leaves_the_training_step_unchanged():
    teacher = _tiny("hdkd_teacher", seed=1).eval()
    data = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    weights = []
    for every in (0, 1):
        student = _tiny("hdkd", seed=2)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
        train_one_epoch(student, HDKDLoss(teacher), data, optimizer, torch.device("cpu"), progress=False,
                        grad_share_every=every)  # fmt: skip
        weights.append({k: v.clone() for k, v in student.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
