"""Loss terms on analytic cases and against an independent float64 reference."""
import math

import numpy as np
import pytest
import torch

from distill import losses

KINDS = ["forward_kl", "reverse_kl", "jsd"]


def reference(s_logits, t_logits, mask, T, kind, beta=0.5):
    """Plain numpy float64: mean over masked positions of T^2 * D."""
    s = s_logits.detach().double().numpy() / T
    t = t_logits.detach().double().numpy() / T
    ps = np.exp(s - s.max(-1, keepdims=True)); ps /= ps.sum(-1, keepdims=True)
    pt = np.exp(t - t.max(-1, keepdims=True)); pt /= pt.sum(-1, keepdims=True)

    def kl(p, q):
        return (p * (np.log(p) - np.log(q))).sum(-1)

    if kind == "forward_kl":
        d = kl(pt, ps)
    elif kind == "reverse_kl":
        d = kl(ps, pt)
    else:
        m = beta * pt + (1 - beta) * ps
        d = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    m_ = mask.numpy().astype(bool)
    return T * T * d[m_].mean()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 5, 7), (3, 4, 1000), (1, 3, 256_000)])
def test_matches_reference(kind, shape):
    g = torch.Generator().manual_seed(hash((kind, shape)) % 1000)
    s = torch.randn(*shape, generator=g) * 3
    t = torch.randn(*shape, generator=g) * 3
    mask = torch.rand(shape[:2], generator=g) > 0.3
    mask[0, 0] = True
    for T in (1.0, 2.0):
        got = losses.kd_divergence(s, t, mask, temperature=T, kind=kind, beta=0.3 if kind == "jsd" else 0.5)
        want = reference(s, t, mask, T, kind, beta=0.3)
        assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_logits_give_zero(kind):
    x = torch.randn(2, 4, 11)
    assert losses.kd_divergence(x, x.clone(), torch.ones(2, 4, dtype=torch.bool), 2.0, kind).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_temperature_squared_factor_two_classes():
    s = torch.tensor([[[0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0]]])
    T = 3.0
    p = torch.softmax(t / T, -1)[0, 0]
    q = torch.softmax(s / T, -1)[0, 0]
    by_hand = T * T * float((p * (p / q).log()).sum())
    got = losses.kd_divergence(s, t, torch.ones(1, 1, dtype=torch.bool), temperature=T)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_change_nothing(kind):
    s, t = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    base = losses.kd_divergence(s, t, mask, 2.0, kind)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = torch.randn_like(s2[~mask]) * 50
    t2[~mask] = 1e4  # even absurd values at padding
    assert losses.kd_divergence(s2, t2, mask, 2.0, kind).item() == pytest.approx(base.item(), rel=1e-6)


def test_reverse_is_forward_swapped():
    s, t = torch.randn(2, 3, 13), torch.randn(2, 3, 13)
    m = torch.ones(2, 3, dtype=torch.bool)
    assert losses.kd_divergence(s, t, m, 1.5, "reverse_kl").item() == pytest.approx(
        losses.kd_divergence(t, s, m, 1.5, "forward_kl").item(), rel=1e-6)


def test_jsd_symmetric_at_half_and_bounded():
    s, t = torch.randn(2, 3, 13), torch.randn(2, 3, 13)
    m = torch.ones(2, 3, dtype=torch.bool)
    a = losses.kd_divergence(s, t, m, 2.0, "jsd", beta=0.5)
    b = losses.kd_divergence(t, s, m, 2.0, "jsd", beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    far_s = torch.tensor([[[100.0, -100.0]]])
    far_t = torch.tensor([[[-100.0, 100.0]]])
    T = 1.0
    bound = math.log(2) * T * T
    got = losses.kd_divergence(far_s, far_t, torch.ones(1, 1, dtype=torch.bool), T, "jsd")
    assert got.item() <= bound + 1e-6 and got.item() == pytest.approx(bound, rel=1e-3)
    for T in (1.0, 4.0):
        x = losses.kd_divergence(torch.randn(4, 5, 30) * 20, torch.randn(4, 5, 30) * 20,
                                 torch.ones(4, 5, dtype=torch.bool), T, "jsd")
        assert x.item() <= math.log(2) * T * T


def test_jsd_beta_direction():
    """beta weighs the teacher: m = beta t + (1 - beta) s, as in the GKD paper and TRL."""
    s, t = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    m = torch.ones(1, 2, dtype=torch.bool)
    got = losses.kd_divergence(s, t, m, 1.0, "jsd", beta=0.2).item()
    assert got == pytest.approx(reference(s, t, m, 1.0, "jsd", beta=0.2), rel=1e-5)
    assert got != pytest.approx(reference(s, t, m, 1.0, "jsd", beta=0.8), rel=1e-3)
    with pytest.raises(ValueError, match="beta"):
        losses.kd_divergence(s, t, m, 1.0, "jsd", beta=1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_inputs_match_float32(dtype, kind):
    s, t = torch.randn(2, 4, 50).to(dtype), torch.randn(2, 4, 50).to(dtype)
    m = torch.ones(2, 4, dtype=torch.bool)
    low = losses.kd_divergence(s, t, m, 2.0, kind)
    full = losses.kd_divergence(s.float(), t.float(), m, 2.0, kind)
    assert low.dtype == torch.float32 and abs(low.item() - full.item()) < 1e-3


def test_all_masked_is_zero_with_finite_gradient():
    s = torch.randn(2, 3, 7, requires_grad=True)
    out = losses.kd_divergence(s, torch.randn(2, 3, 7), torch.zeros(2, 3, dtype=torch.bool), 2.0)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(s.grad).all()
    labels = torch.full((2, 3), -100)
    ce = losses.answer_ce(s, labels)
    assert ce.item() == 0.0 and not torch.isnan(ce)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_unchunked(kind):
    s1 = torch.randn(2, 9, 40, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    t = torch.randn(2, 9, 40)
    m = torch.rand(2, 9) > 0.2
    a = losses.kd_divergence(s1, t, m, 2.0, kind)
    b = losses.kd_divergence(s2, t, m, 2.0, kind, chunk_size=4)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)


def test_vocab_mismatch():
    s, t = torch.randn(1, 2, 10), torch.randn(1, 2, 12)
    m = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="vocab_size"):
        losses.kd_divergence(s, t, m)
    sliced = losses.kd_divergence(s, t, m, vocab_size=10)
    assert sliced.item() == pytest.approx(losses.kd_divergence(s, t[..., :10], m).item())


def test_answer_ce_shift_mask_and_gradient():
    logits = torch.randn(1, 4, 6, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 5]])
    # positions 1 and 2 predict tokens 3 and 5
    lp = torch.log_softmax(logits[0].float(), -1)
    by_hand = -(lp[1, 3] + lp[2, 5]) / 2
    ce = losses.answer_ce(logits, labels)
    assert ce.item() == pytest.approx(by_hand.item(), rel=1e-6)
    ce.backward()
    assert logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, 2].abs().sum() > 0
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 3].abs().sum() == 0
    # divided by the window's count, not the batch's
    assert losses.answer_ce(logits, labels, num_items_in_batch=8).item() == pytest.approx(by_hand.item() * 2 / 8)


def test_layer_maps():
    assert losses.uniform_layer_map(2, 4) == [1, 3]
    assert losses.uniform_layer_map(18, 28)[-1] == 27 and losses.uniform_layer_map(18, 28)[0] == 1
    assert losses.uniform_layer_map(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="entries"):
        losses.check_layer_map([0], 2, 4)
    with pytest.raises(ValueError, match="out of range"):
        losses.check_layer_map([0, 4], 2, 4)


def test_hidden_loss_cases():
    h = torch.randn(2, 5, 8)
    m = torch.ones(2, 5, dtype=torch.bool)
    assert losses.hidden_state_loss(h, h.clone(), m).item() == pytest.approx(0.0, abs=1e-7)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    a = losses.hidden_state_loss(s, t, m)
    b = losses.hidden_state_loss(s * 16, t * 16, m)  # Gemma's sqrt(hidden) scaling does not matter
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert losses.hidden_state_loss(s, t, m, kind="cosine").item() == pytest.approx(
        float((1 - torch.cosine_similarity(s, t, dim=-1)).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="projection"):
        losses.hidden_state_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 8), torch.ones(1, 2, dtype=torch.bool))
    m2 = m.clone()
    m2[1] = False
    t2 = t.clone()
    t2[1] = 999.0
    assert losses.hidden_state_loss(s, t2, m2).item() == pytest.approx(losses.hidden_state_loss(s[:1], t[:1], m[:1]).item())


def test_projection_learns_and_round_trips(tmp_path):
    torch.manual_seed(0)
    proj = losses.HiddenProjection(4, 8)
    target_map = torch.randn(8, 4)
    s = torch.randn(3, 6, 4)
    t = s @ target_map.T
    m = torch.ones(3, 6, dtype=torch.bool)
    before_w = proj.linear.weight.detach().clone()
    opt = torch.optim.Adam(proj.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = losses.hidden_state_loss(s, t, m, projection=proj)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first and not torch.equal(before_w, proj.linear.weight)
    proj.save(tmp_path)
    again = losses.HiddenProjection.load(tmp_path)
    assert torch.equal(again.linear.weight, proj.linear.weight)
    assert torch.equal(losses.HiddenProjection(5, 5).linear.weight, torch.eye(5))


def test_hidden_losses_use_the_map():
    s_h = tuple(torch.randn(1, 3, 4) for _ in range(3))  # embeddings + 2 layers
    t_h = tuple(torch.randn(1, 3, 4) for _ in range(5))  # embeddings + 4 layers
    m = torch.ones(1, 3, dtype=torch.bool)
    got = losses.hidden_losses(s_h, t_h, [1, 3], m)
    want = (losses.hidden_state_loss(s_h[1], t_h[2], m) + losses.hidden_state_loss(s_h[2], t_h[4], m)) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_total_loss_skips_zero_weights():
    ce, kd = torch.tensor(2.0), torch.tensor(3.0)
    assert losses.total_loss(ce, kd, None, 1.0, 0.5, 0.0).item() == pytest.approx(3.5)
    assert losses.total_loss(ce, None, None, 1.0, 0.0, 0.0).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        losses.total_loss(None, None, None, 0.0, 0.0, 0.0)
