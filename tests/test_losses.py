"""Golden values: each loss against numbers computed by hand with plain Python ``math``.

s = [[1, 2, 0.5], [0, -1, 3]], t = [[2, 0, 1], [1, 1, 1]], y = [0, 2]
KL_T = mean_i sum_k p_k log(p_k / q_k), p = softmax(t_i / T), q = softmax(s_i / T)
"""
import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import bind_loss, hinton, kl, list_losses

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


def test_identical_logits_give_zero_kl():
    assert kl(S, S, Y)["kd"].item() == pytest.approx(0.0, abs=1e-15)


def test_registry_lists_and_binds_only_accepted_params():
    assert {"kl", "hinton"} <= set(list_losses())
    loss = bind_loss("kl", temperature=4.0, alpha=0.5)  # alpha is not kl's: ignored
    assert loss(S, T, Y)["kd"].item() == pytest.approx(KL_T4)
