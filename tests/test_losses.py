"""Golden values: each loss against numbers computed by hand with plain Python ``math``.

s = [[1, 2, 0.5], [0, -1, 3]], t = [[2, 0, 1], [1, 1, 1]], y = [0, 2]
KL_T = mean_i sum_k p_k log(p_k / q_k), p = softmax(t_i / T), q = softmax(s_i / T)
"""
import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.errors import ConfigError
from kdistill.losses import (bind_loss, dkd, feature_kind, hinton, is_feature_loss, kl,
                             list_losses, mse)

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
T = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([0, 2])
KL_T1 = 0.9824559065238385
KL_T4 = 0.07319887594103043
CE = 0.7651263439326871


def test_kl_matches_hand_computation_and_the_spec_function():
    assert kl(S, T, Y)["kd"].item() == pytest.approx(KL_T1, rel=1e-12)
    spec = F.kl_div(F.log_softmax(S, dim=1), F.softmax(T, dim=1), reduction="batchmean")
    assert kl(S, T, Y)["kd"].item() == spec.item()
    assert kl(S, T, Y, temperature=4.0)["kd"].item() == pytest.approx(KL_T4, rel=1e-12)


def test_kl_uses_no_labels():
    assert set(kl(S, T, Y)) == {"kd"}
    assert kl(S, T, Y)["kd"].item() == kl(S, T, 1 - Y)["kd"].item()


def test_hinton_terms_are_weighted_and_t_squared_scaled():
    terms = hinton(S, T, Y, temperature=4.0, alpha=0.9)
    assert terms["kd"].item() == pytest.approx(0.9 * 16 * KL_T4, rel=1e-12)
    assert terms["ce"].item() == pytest.approx(0.1 * CE, rel=1e-12)


def test_hinton_limits():
    assert hinton(S, T, Y, temperature=1.0, alpha=1.0)["kd"].item() == pytest.approx(KL_T1)
    assert hinton(S, T, Y, temperature=1.0, alpha=1.0)["ce"].item() == 0.0
    assert hinton(S, T, Y, temperature=3.0, alpha=0.0)["ce"].item() == pytest.approx(CE)


def test_mse_regresses_logits_by_hand():
    # S - T = [[-1, 2, -0.5], [-1, -2, 2]]: squares sum to 14.25 over 6 entries, halved: 1.1875
    terms = mse(S, T, Y, alpha=0.9)
    assert terms["kd"].item() == pytest.approx(0.9 * 1.1875, rel=1e-12)
    assert terms["ce"].item() == pytest.approx(0.1 * CE, rel=1e-12)
    assert mse(S + 1, T, Y, alpha=1.0)["kd"].item() != mse(S, T, Y, alpha=1.0)["kd"].item()


def test_mse_is_hintons_high_temperature_limit_for_zero_mean_logits():
    s, t = S - S.mean(1, keepdim=True), T - T.mean(1, keepdim=True)
    limit = hinton(s, t, Y, temperature=1e3, alpha=1.0)["kd"].item()
    assert limit == pytest.approx(mse(s, t, Y, alpha=1.0)["kd"].item(), rel=1e-3)


def test_identical_logits_give_zero_kl():
    assert kl(S, S, Y)["kd"].item() == pytest.approx(0.0, abs=1e-15)


def test_registry_lists_and_binds_only_accepted_params():
    assert {"kl", "hinton"} <= set(list_losses())
    loss = bind_loss("kl", temperature=4.0, alpha=0.5)  # alpha is not kl's: ignored
    assert loss(S, T, Y)["kd"].item() == pytest.approx(KL_T4)


# Logit standardisation (Sun et al. 2024): z = (z - mean) / (std + 1e-7), unbiased std over the
# classes; the teacher's second row is constant, so it standardises to zeros.
KL_T1_STD = 0.6048104534442851
KL_T4_STD = 0.04399622694538662
# DKD at T=4, T²-scaled and unweighted: TCKD = KL of the (p_y, 1 - p_y) pairs, NCKD = KL of the
# softmaxes over the non-target logits only.
TCKD_T4, NCKD_T4 = 0.9040790762610107, 0.4506911730681495
TCKD_T4_STD, NCKD_T4_STD = 0.37785185686117573, 0.5593419906329031


def _py_softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def _py_kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _py_zscore(z):
    mean = sum(z) / len(z)
    std = math.sqrt(sum((v - mean) ** 2 for v in z) / (len(z) - 1))
    return [(v - mean) / (std + 1e-7) for v in z]


def _py_kl_t(tau, standardize):
    total = 0.0
    for s, t in zip(S.tolist(), T.tolist()):
        if standardize:
            s, t = _py_zscore(s), _py_zscore(t)
        total += _py_kl(_py_softmax([v / tau for v in t]), _py_softmax([v / tau for v in s]))
    return total / len(S)


def _py_dkd(tau, standardize):
    tckd = nckd = 0.0
    for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist()):
        if standardize:
            s, t = _py_zscore(s), _py_zscore(t)
        ps, pt = _py_softmax([v / tau for v in s]), _py_softmax([v / tau for v in t])
        tckd += _py_kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest_s = [v / tau for k, v in enumerate(s) if k != y]
        rest_t = [v / tau for k, v in enumerate(t) if k != y]
        nckd += _py_kl(_py_softmax(rest_t), _py_softmax(rest_s))
    return tau**2 * tckd / len(S), tau**2 * nckd / len(S)


def test_golden_values_come_from_plain_python():
    assert _py_kl_t(1, False) == pytest.approx(KL_T1, rel=1e-12)
    assert _py_kl_t(1, True) == pytest.approx(KL_T1_STD, rel=1e-12)
    assert _py_kl_t(4, True) == pytest.approx(KL_T4_STD, rel=1e-12)
    assert _py_dkd(4, False) == pytest.approx((TCKD_T4, NCKD_T4), rel=1e-12)
    assert _py_dkd(4, True) == pytest.approx((TCKD_T4_STD, NCKD_T4_STD), rel=1e-12)


def test_kl_and_hinton_standardize_the_soft_term_only():
    assert kl(S, T, Y, standardize=True)["kd"].item() == pytest.approx(KL_T1_STD, rel=1e-12)
    assert kl(S, T, Y, temperature=4.0, standardize=True)["kd"].item() == pytest.approx(KL_T4_STD,
                                                                                         rel=1e-12)
    terms = hinton(S, T, Y, temperature=4.0, alpha=0.9, standardize=True)
    assert terms["kd"].item() == pytest.approx(0.9 * 16 * KL_T4_STD, rel=1e-12)
    assert terms["ce"].item() == pytest.approx(0.1 * CE, rel=1e-12)  # raw logits


def test_standardized_kl_ignores_logit_scale_and_shift():
    assert kl(3 * S + 5, T, Y, standardize=True)["kd"].item() == pytest.approx(KL_T1_STD, rel=1e-6)


def test_dkd_matches_hand_computation():
    terms = dkd(S, T, Y, temperature=4.0, alpha=1.0, beta=8.0)
    assert set(terms) == {"ce", "tckd", "nckd"}
    assert terms["ce"].item() == pytest.approx(CE, rel=1e-12)
    assert terms["tckd"].item() == pytest.approx(TCKD_T4, rel=1e-12)
    assert terms["nckd"].item() == pytest.approx(8.0 * NCKD_T4, rel=1e-12)
    weighted = dkd(S, T, Y, temperature=4.0, alpha=0.5, beta=2.0)
    assert weighted["tckd"].item() == pytest.approx(0.5 * TCKD_T4, rel=1e-12)
    assert weighted["nckd"].item() == pytest.approx(2.0 * NCKD_T4, rel=1e-12)


def test_dkd_standardized_matches_hand_computation_and_keeps_raw_ce():
    terms = dkd(S, T, Y, standardize=True)  # defaults: T=4, alpha=1, beta=8
    assert terms["ce"].item() == pytest.approx(CE, rel=1e-12)
    assert terms["tckd"].item() == pytest.approx(TCKD_T4_STD, rel=1e-12)
    assert terms["nckd"].item() == pytest.approx(8.0 * NCKD_T4_STD, rel=1e-12)


def test_dkd_gradients_are_finite_for_confident_float32_logits():
    torch.manual_seed(0)
    s = (torch.randn(16, 10) * 30).requires_grad_()
    y = torch.randint(0, 10, (16,))
    sum(dkd(s, torch.randn(16, 10) * 30, y).values()).backward()
    assert torch.isfinite(s.grad).all()


def test_registry_has_dkd_and_feature_objectives():
    names = list_losses()
    assert {"kl", "hinton", "dkd", "fitnets", "at"} <= set(names)
    assert all(names[n] for n in names)  # one line each
    assert "Decoupled" in names["dkd"] and "FitNets" in names["fitnets"]
    assert not is_feature_loss("hinton") and is_feature_loss("fitnets") and is_feature_loss("at")
    assert feature_kind("fitnets") == "fitnets" and feature_kind("at") == "at"
    with pytest.raises(ConfigError, match="'hinton' is not a feature"):
        feature_kind("hinton")


def test_feature_objectives_bind_to_their_hinton_terms():
    loss = bind_loss("fitnets", temperature=4.0, alpha=0.9, beta=8.0)  # beta is not hinton's
    assert loss(S, T, Y)["kd"].item() == pytest.approx(0.9 * 16 * KL_T4, rel=1e-12)
    assert bind_loss("at", temperature=4.0)(S, T, Y).keys() == {"kd", "ce"}


def test_unknown_loss_lists_all_names():
    with pytest.raises(ConfigError, match="unknown distillation loss 'nope'") as err:
        bind_loss("nope")
    assert "fitnets" in str(err.value) and "dkd" in str(err.value)
