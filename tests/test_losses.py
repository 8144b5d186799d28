"""Loss terms on analytic cases and against independent float64 references."""
import math

import numpy as np
import pytest
import torch

from distill.kd import losses

KINDS = ["forward_kl", "reverse_kl", "jsd"]


def all_true(*shape):
    return torch.ones(*shape, dtype=torch.bool)


def reference(s_logits, t_logits, mask, T, kind, beta=0.5):
    """numpy float64: mean over masked positions of T^2 * D(t, s)."""
    def probs(x):
        x = x.detach().double().numpy() / T
        p = np.exp(x - x.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    ps, pt = probs(s_logits), probs(t_logits)

    def kl(p, q):
        return (p * (np.log(p) - np.log(q))).sum(-1)

    if kind == "forward_kl":
        d = kl(pt, ps)
    elif kind == "reverse_kl":
        d = kl(ps, pt)
    else:
        m = beta * pt + (1 - beta) * ps
        d = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    return T * T * d[mask.numpy().astype(bool)].mean()


# --- kd_divergence -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 5, 7), (3, 4, 1000), (1, 3, 256_000)])
def test_matches_reference(kind, shape):
    g = torch.Generator().manual_seed(shape[-1] * 10 + KINDS.index(kind))
    s = torch.randn(*shape, generator=g) * 3
    t = torch.randn(*shape, generator=g) * 3
    mask = torch.rand(shape[:2], generator=g) > 0.3
    mask[0, 0] = True
    beta = 0.3 if kind == "jsd" else 0.5
    for T in (1.0, 2.0):
        got = losses.kd_divergence(s, t, mask, temperature=T, kind=kind, beta=beta)
        want = reference(s, t, mask, T, kind, beta=beta)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_kl_matches_torch_distributions(T):
    s, t = torch.randn(3, 4, 17), torch.randn(3, 4, 17)
    m = all_true(3, 4)
    ps = torch.distributions.Categorical(logits=s.double() / T)
    pt = torch.distributions.Categorical(logits=t.double() / T)
    fwd = torch.distributions.kl_divergence(pt, ps).mean() * T * T
    rev = torch.distributions.kl_divergence(ps, pt).mean() * T * T
    assert losses.kd_divergence(s, t, m, T, "forward_kl").item() == pytest.approx(fwd.item(), rel=1e-5)
    assert losses.kd_divergence(s, t, m, T, "reverse_kl").item() == pytest.approx(rev.item(), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_logits_give_zero(kind):
    x = torch.randn(2, 4, 11) * 5
    for T in (1.0, 2.0):
        assert losses.kd_divergence(x, x.clone(), all_true(2, 4), T, kind).item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_squared_factor_two_classes():
    # teacher logits (1, 0), student (0, 1): at temperature T both are 2-class softmaxes of +-1/T
    T = 3.0
    p1 = 1 / (1 + math.exp(-1 / T))  # teacher P(class 0); the student's P(class 0) is 1 - p1
    q1 = 1 - p1
    kl_at_T = p1 * math.log(p1 / q1) + (1 - p1) * math.log((1 - p1) / (1 - q1))
    got = losses.kd_divergence(torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[1.0, 0.0]]]), all_true(1, 1),
                               temperature=T)
    assert got.item() == pytest.approx(T * T * kl_at_T, rel=1e-6)
    assert got.item() != pytest.approx(kl_at_T, rel=1e-2)  # the factor is really applied


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_change_nothing(kind):
    s, t = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    base = losses.kd_divergence(s, t, mask, 2.0, kind)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = torch.randn_like(s2[~mask]) * 50
    t2[~mask] = 1e4  # even absurd values at padding
    assert losses.kd_divergence(s2, t2, mask, 2.0, kind).item() == pytest.approx(base.item(), rel=1e-6)
    # ... and equals the mean over the selected positions alone
    alone = losses.kd_divergence(s[mask][None], t[mask][None], all_true(1, int(mask.sum())), 2.0, kind)
    assert alone.item() == pytest.approx(base.item(), rel=1e-6)


def test_reverse_is_forward_swapped():
    s, t = torch.randn(2, 3, 13), torch.randn(2, 3, 13)
    m = all_true(2, 3)
    rev = losses.kd_divergence(s, t, m, 1.5, "reverse_kl").item()
    assert rev == pytest.approx(losses.kd_divergence(t, s, m, 1.5, "forward_kl").item(), rel=1e-6)
    assert rev != pytest.approx(losses.kd_divergence(s, t, m, 1.5, "forward_kl").item(), rel=1e-3)
    t_leaf = t.clone().requires_grad_(True)
    for kind in KINDS:  # the teacher is a fixed target
        assert not losses.kd_divergence(s, t_leaf, m, 1.5, kind).requires_grad


def test_jsd_symmetric_at_half_and_bounded():
    s, t = torch.randn(2, 3, 13) * 3, torch.randn(2, 3, 13) * 3
    m = all_true(2, 3)
    a = losses.kd_divergence(s, t, m, 2.0, "jsd", beta=0.5)
    b = losses.kd_divergence(t, s, m, 2.0, "jsd", beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert losses.kd_divergence(s, t, m, 2.0, "jsd", beta=0.2).item() != pytest.approx(
        losses.kd_divergence(t, s, m, 2.0, "jsd", beta=0.2).item(), rel=1e-3)  # not symmetric elsewhere
    for T in (1.0, 2.0):
        bound = math.log(2) * T * T
        far = losses.kd_divergence(torch.tensor([[[200.0, -200.0]]]), torch.tensor([[[-200.0, 200.0]]]),
                                   all_true(1, 1), T, "jsd")  # disjoint supports: the bound is reached
        assert far.item() <= bound + 1e-6 and far.item() == pytest.approx(bound, rel=1e-4)
        x = losses.kd_divergence(torch.randn(4, 5, 30) * 20, torch.randn(4, 5, 30) * 20, all_true(4, 5), T, "jsd")
        assert 0 < x.item() <= bound


def test_jsd_beta_against_definition_and_limits():
    """m = beta t + (1 - beta) s (GKD / TRL); jsd / beta -> KL(t||s) as beta -> 0, jsd / (1 - beta) -> KL(s||t) as beta -> 1."""
    s, t = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    m = all_true(1, 2)
    got = losses.kd_divergence(s, t, m, 1.0, "jsd", beta=0.2).item()
    assert got == pytest.approx(reference(s, t, m, 1.0, "jsd", beta=0.2), rel=1e-5)
    assert got != pytest.approx(reference(s, t, m, 1.0, "jsd", beta=0.8), rel=1e-3)  # beta weighs the teacher
    eps = 1e-4
    fwd = losses.kd_divergence(s, t, m, 1.0, "forward_kl").item()
    rev = losses.kd_divergence(s, t, m, 1.0, "reverse_kl").item()
    assert losses.kd_divergence(s, t, m, 1.0, "jsd", beta=eps).item() / eps == pytest.approx(fwd, rel=1e-2)
    assert losses.kd_divergence(s, t, m, 1.0, "jsd", beta=1 - eps).item() / eps == pytest.approx(rev, rel=1e-2)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="beta"):
            losses.kd_divergence(s, t, m, 1.0, "jsd", beta=bad)
    with pytest.raises(ValueError, match="kind"):
        losses.kd_divergence(s, t, m, 1.0, "kl")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_inputs_match_float32(dtype, kind):
    g = torch.Generator().manual_seed(7)
    s, t = (torch.randn(2, 4, 4000, generator=g) * 4).to(dtype), (torch.randn(2, 4, 4000, generator=g) * 4).to(dtype)
    m = all_true(2, 4)
    low = losses.kd_divergence(s, t, m, 2.0, kind)
    full = losses.kd_divergence(s.float(), t.float(), m, 2.0, kind)
    assert low.dtype == torch.float32
    assert abs(low.item() - full.item()) < 1e-3


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_all_masked_is_zero_with_finite_gradient(kind, chunk_size):
    s = torch.randn(2, 3, 7, requires_grad=True)
    out = losses.kd_divergence(s, torch.randn(2, 3, 7), torch.zeros(2, 3, dtype=torch.bool), 2.0, kind,
                               chunk_size=chunk_size, num_items=torch.tensor(0))
    out.backward()
    assert out.item() == 0.0 and s.grad is not None and torch.isfinite(s.grad).all()


def test_neg_inf_logits_stay_finite():
    """A masked vocabulary (-inf logits) gives the loss over the remaining tokens, not NaN."""
    s, t = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    s_inf, t_inf = s.clone(), t.clone()
    s_inf[..., 5:], t_inf[..., 5:] = float("-inf"), float("-inf")  # ruled out by both
    for kind in KINDS:
        for chunk_size in (None, 2):
            leaf = s_inf.clone().requires_grad_(True)
            out = losses.kd_divergence(leaf, t_inf, all_true(1, 3), 2.0, kind, chunk_size=chunk_size)
            out.backward()
            assert out.item() == pytest.approx(reference(s[..., :5], t[..., :5], all_true(1, 3), 2.0, kind), rel=1e-5)
            assert torch.isfinite(leaf.grad).all() and (leaf.grad[..., 5:] == 0).all()
    # ruled out by the teacher only: forward KL sums over the teacher's support
    t_inf[..., 4] = float("-inf")
    leaf = s_inf.clone().requires_grad_(True)
    out = losses.kd_divergence(leaf, t_inf, all_true(1, 3), 2.0, "forward_kl")
    out.backward()
    log_pt = torch.log_softmax(t[..., :4].double() / 2, -1)
    log_ps = torch.log_softmax(s[..., :5].double() / 2, -1)[..., :4]
    want = 4 * float((log_pt.exp() * (log_pt - log_ps)).sum(-1).mean())
    assert out.item() == pytest.approx(want, rel=1e-5) and torch.isfinite(leaf.grad).all()
    assert math.isfinite(losses.kd_divergence(s_inf, t_inf, all_true(1, 3), 2.0, "jsd").item())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 100])
def test_chunked_equals_unchunked(kind, chunk_size):
    g = torch.Generator().manual_seed(chunk_size)
    s1 = (torch.randn(2, 9, 40, generator=g) * 3).requires_grad_(True)
    s2 = s1.detach().clone().requires_grad_(True)
    t = torch.randn(2, 9, 40, generator=g) * 3
    m = torch.rand(2, 9, generator=g) > 0.2
    a = losses.kd_divergence(s1, t, m, 2.0, kind)
    b = losses.kd_divergence(s2, t, m, 2.0, kind, chunk_size=chunk_size)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert s1.grad.abs().sum() > 0 and torch.allclose(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)


def test_chunking_bounds_memory(monkeypatch):
    """Chunked: no tensor larger than a chunk is kept for backward, and no chunk is computed twice."""
    calls = []
    inner = losses._divergence_sum
    monkeypatch.setattr(losses, "_divergence_sum", lambda s, *a: calls.append(s.shape[0]) or inner(s, *a))

    def run(chunk_size):
        biggest = [0]

        def pack(x):
            biggest[0] = max(biggest[0], x.numel())
            return x

        s = torch.randn(1, 10, 30, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = losses.kd_divergence(s, torch.randn(1, 10, 30), all_true(1, 10), 2.0, "jsd", chunk_size=chunk_size)
        out.backward()
        return biggest[0], s.grad

    biggest, grad = run(4)
    assert calls == [4, 4, 2]  # backward only scales the gradient computed chunk by chunk
    assert 0 < biggest <= 4 * 30 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert run(None)[0] >= 10 * 30  # the check can see a whole-batch tensor
    s = torch.randn(1, 10, 30, requires_grad=True)
    out = losses.kd_divergence(s, torch.randn(1, 10, 30), all_true(1, 10), chunk_size=4)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        out.backward()


def test_num_items_divides_the_sum():
    s, t = torch.randn(2, 5, 9), torch.randn(2, 5, 9)
    m = torch.rand(2, 5) > 0.4
    m[0, 0] = True
    n = int(m.sum())
    mean = losses.kd_divergence(s, t, m, 2.0)
    assert losses.kd_divergence(s, t, m, 2.0, num_items=3 * n).item() == pytest.approx(mean.item() / 3, rel=1e-6)
    # two micro-batches with a shared divisor add up to the full batch's mean
    halves = sum(losses.kd_divergence(s[i:i + 1], t[i:i + 1], m[i:i + 1], 2.0, num_items=n) for i in range(2))
    assert halves.item() == pytest.approx(mean.item(), rel=1e-6)


def test_vocab_mismatch():
    s, t = torch.randn(1, 2, 10), torch.randn(1, 2, 12)
    m = all_true(1, 2)
    with pytest.raises(ValueError, match="vocab_size"):
        losses.kd_divergence(s, t, m)
    sliced = losses.kd_divergence(s, t, m, vocab_size=10)
    assert sliced.item() == pytest.approx(losses.kd_divergence(s, t[..., :10], m).item(), rel=1e-6)
    assert sliced.item() != pytest.approx(losses.kd_divergence(s[..., :8], t[..., :8], m).item(), rel=1e-3)
    assert losses.kd_divergence(s, t, m, vocab_size=8).item() == pytest.approx(
        losses.kd_divergence(s[..., :8], t[..., :8], m).item(), rel=1e-6)
    with pytest.raises(ValueError, match="vocab_size"):
        losses.kd_divergence(s, t, m, vocab_size=11)


def test_chunked_on_sliced_half_logits_and_without_grad():
    """The trainer's case: bf16 logits[:, :-1] (a strided view), padded vocab sliced off, partial mask."""
    g = torch.Generator().manual_seed(3)
    full_s = (torch.randn(2, 8, 40, generator=g) * 3).to(torch.bfloat16).requires_grad_(True)
    t = torch.randn(2, 7, 36, generator=g) * 3
    m = torch.rand(2, 7, generator=g) > 0.3
    grads = []
    for chunk_size in (None, 3):
        full_s.grad = None
        out = losses.kd_divergence(full_s[:, :-1], t, m, 2.0, "reverse_kl", chunk_size=chunk_size, vocab_size=36,
                                   num_items=20)
        out.backward()
        grads.append(full_s.grad.float())
        with torch.no_grad():
            assert losses.kd_divergence(full_s[:, :-1], t, m, 2.0, "reverse_kl", chunk_size=chunk_size,
                                        vocab_size=36, num_items=20).item() == pytest.approx(out.item(), rel=1e-6)
    assert torch.allclose(grads[0], grads[1], rtol=1e-2, atol=1e-5)  # bf16 gradients
    assert (grads[1][:, -1] == 0).all() and (grads[1][..., 36:] == 0).all() and grads[1].abs().sum() > 0


# --- answer_ce ----------------------------------------------------------------------------------------

def test_answer_ce_shift_mask_and_gradient():
    logits = torch.randn(1, 4, 6, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 5]])
    lp = torch.log_softmax(logits[0].detach().double(), -1)
    by_hand = float(-(lp[1, 3] + lp[2, 5]) / 2)  # positions 1 and 2 predict tokens 3 and 5
    ce = losses.answer_ce(logits, labels)
    assert ce.item() == pytest.approx(by_hand, rel=1e-6)
    ce.backward()
    assert logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, 2].abs().sum() > 0
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 3].abs().sum() == 0
    # divided by the accumulation window's count, not this batch's
    assert losses.answer_ce(logits, labels, num_items_in_batch=8).item() == pytest.approx(by_hand * 2 / 8, rel=1e-6)


def test_answer_ce_is_a_token_mean_in_float32():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 1, 2, 3, -100], [-100, -100, -100, 6, -100]])
    lp = torch.log_softmax(logits.double(), -1)
    nll = [-lp[0, 0, 1], -lp[0, 1, 2], -lp[0, 2, 3], -lp[1, 2, 6]]
    assert losses.answer_ce(logits, labels).item() == pytest.approx(float(sum(nll) / 4), rel=1e-6)
    half = losses.answer_ce(logits.to(torch.bfloat16), labels)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(losses.answer_ce(logits.to(torch.bfloat16).float(), labels).item(), abs=1e-6)


def test_answer_ce_without_answer_is_zero_with_graph():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    ce = losses.answer_ce(logits, torch.tensor([[-100, -100, -100], [5, -100, -100]]))  # position 0 is never a target
    ce.backward()
    assert ce.item() == 0.0 and torch.isfinite(logits.grad).all()


# --- layer maps ---------------------------------------------------------------------------------------

def test_layer_maps():
    assert losses.uniform_layer_map(18, 28) == [1, 2, 4, 5, 7, 8, 10, 11, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27]
    assert losses.uniform_layer_map(2, 4) == [1, 3]
    assert losses.uniform_layer_map(4, 6) == [1, 2, 3, 5]  # round(4.5) == 4: Python rounds halves to even
    assert losses.uniform_layer_map(3, 3) == [0, 1, 2]
    assert losses.uniform_layer_map(1, 12) == [11]
    assert losses.uniform_layer_map(4, 2) == [0, 0, 1, 1]  # deeper student: round(0.5) - 1 clamped to layer 0
    for n_s, n_t in ((18, 28), (4, 6), (4, 2), (7, 30)):
        losses.check_layer_map(losses.uniform_layer_map(n_s, n_t), n_s, n_t)
    with pytest.raises(ValueError, match="2 layers"):
        losses.check_layer_map([0], 2, 4)
    with pytest.raises(ValueError, match="out of range"):
        losses.check_layer_map([0, 4], 2, 4)
    with pytest.raises(ValueError, match=r"\[-1\]"):
        losses.check_layer_map([-1, 3], 2, 4)
    with pytest.raises(ValueError, match="integers"):
        losses.check_layer_map([0, 1.5], 2, 4)


# --- hidden states ------------------------------------------------------------------------------------

def test_hidden_mse_cases():
    m = all_true(2, 5)
    h = torch.randn(2, 5, 8)
    assert losses.hidden_state_loss(h, h.clone(), m).item() == pytest.approx(0.0, abs=1e-7)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8) * 3
    a = losses.hidden_state_loss(s, t, m)
    want = float(((s.double() - t.double()) ** 2).mean() / (t.double() ** 2).mean())
    assert a.item() == pytest.approx(want, rel=1e-5)
    b = losses.hidden_state_loss(s * 16, t * 16, m)  # Gemma's sqrt(hidden) scaling does not matter
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert losses.hidden_state_loss(torch.zeros_like(t), t, m).item() == pytest.approx(1.0, rel=1e-6)
    # the teacher is a target: no gradient reaches it (through the difference or the normaliser)
    s_leaf, t_leaf = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    losses.hidden_state_loss(s_leaf, t_leaf, m).backward()
    assert t_leaf.grad is None and s_leaf.grad.abs().sum() > 0
    # masked positions are ignored, in the normaliser too
    m2 = m.clone()
    m2[1] = False
    t2 = t.clone()
    t2[1] = 999.0
    assert losses.hidden_state_loss(s, t2, m2).item() == pytest.approx(
        losses.hidden_state_loss(s[:1], t[:1], m[:1]).item(), rel=1e-6)


def test_hidden_cosine_and_errors():
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    m = all_true(2, 5)
    cos = np.array([[np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(sr, tr)]
                    for sr, tr in zip(s.double().numpy(), t.double().numpy())])
    assert losses.hidden_state_loss(s, t, m, kind="cosine").item() == pytest.approx(float((1 - cos).mean()), rel=1e-5)
    assert losses.hidden_state_loss(s, s * 5, m, kind="cosine").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="projection"):
        losses.hidden_state_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 8), all_true(1, 2))
    with pytest.raises(ValueError, match="projection"):  # also when nothing is masked in
        losses.hidden_state_loss(torch.randn(1, 2, 4), torch.randn(1, 2, 8), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="kind"):
        losses.hidden_state_loss(s, t, m, kind="l1")


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_all_masked_is_zero_with_graph(kind):
    s = torch.randn(2, 3, 4, requires_grad=True)
    out = losses.hidden_state_loss(s, torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool), kind,
                                   projection=losses.HiddenProjection(4, 8))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(s.grad).all()


def test_hidden_loss_trains_the_projection():
    torch.manual_seed(0)
    proj = losses.HiddenProjection(4, 8)
    s = torch.randn(3, 6, 4)
    t = s @ torch.randn(8, 4).T
    m = all_true(3, 6)
    before = proj.linear.weight.detach().clone()
    opt = torch.optim.Adam(proj.parameters(), lr=0.05)
    history = []
    for _ in range(60):
        loss = losses.hidden_state_loss(s, t, m, projection=proj)
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert history[-1] < 0.2 * history[0]
    assert not torch.allclose(before, proj.linear.weight)


def test_projection_init_and_round_trip(tmp_path):
    assert torch.equal(losses.HiddenProjection(5, 5).linear.weight, torch.eye(5))
    up = losses.HiddenProjection(4, 8)  # orthonormal columns: an isometry, norms kept
    x = torch.randn(10, 4)
    assert torch.allclose(up(x).norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    assert up.linear.bias is None
    path = up.save(tmp_path / "ckpt")
    assert path.name == "hidden_projection.safetensors" and path.parent == tmp_path / "ckpt"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["student_dim"] == "4" and fh.metadata()["teacher_dim"] == "8"
    again = losses.HiddenProjection.load(tmp_path / "ckpt")
    assert (again.student_dim, again.teacher_dim) == (4, 8)
    assert torch.equal(again.linear.weight, up.linear.weight)
    half = losses.HiddenProjection(3, 6).to(torch.bfloat16)
    half.save(tmp_path)
    back = losses.HiddenProjection.load(tmp_path)
    assert back.linear.weight.dtype == torch.bfloat16 and torch.equal(back.linear.weight, half.linear.weight)


def test_hidden_losses_use_index_i_plus_1():
    s_h = tuple(torch.randn(1, 3, 4) for _ in range(3))  # embeddings + 2 layers
    t_h = tuple(torch.randn(1, 3, 4) for _ in range(5))  # embeddings + 4 layers
    m = all_true(1, 3)
    got = losses.hidden_losses(s_h, t_h, [1, 3], m)
    want = (losses.hidden_state_loss(s_h[1], t_h[2], m) + losses.hidden_state_loss(s_h[2], t_h[4], m)) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert got.item() != pytest.approx(losses.hidden_losses(s_h, t_h, [0, 2], m).item(), rel=1e-3)
    proj = losses.HiddenProjection(4, 6)
    t6 = tuple(torch.randn(1, 3, 6) for _ in range(5))
    shared = losses.hidden_losses(s_h, t6, [1, 3], m, "cosine", proj)
    assert shared.item() == pytest.approx(((losses.hidden_state_loss(s_h[1], t6[2], m, "cosine", proj)
                                            + losses.hidden_state_loss(s_h[2], t6[4], m, "cosine", proj)) / 2).item())
    with pytest.raises(ValueError, match="out of range"):
        losses.hidden_losses(s_h, t_h, [1, 4], m)
    with pytest.raises(ValueError, match="missing"):
        losses.hidden_losses(s_h, t_h[:2] + (None,) + t_h[3:], [1, 3], m)


# --- total --------------------------------------------------------------------------------------------

def test_total_loss_weights_and_skipped_terms():
    ce, kd, hid = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert losses.total_loss(ce, kd, hid, 1.0, 0.5, 0.1).item() == pytest.approx(4.0)
    assert losses.total_loss(ce, kd, None, 1.0, 0.5, 0.0).item() == pytest.approx(3.5)
    assert losses.total_loss(ce, None, None, 1.0, 0.0, 0.0).item() == pytest.approx(2.0)
    assert losses.total_loss(ce, torch.tensor(float("nan")), None, 1.0, 0.0, 0.0).item() == pytest.approx(2.0)
    assert losses.total_loss(None, None, None, 0.0, 0.0, 0.0).item() == 0.0
    assert losses.total_loss(None, kd, None, 1.0, 2.0, 0.0).item() == pytest.approx(6.0)  # None counts as 0


# --------------------------------------------------------------------------------------------
# Sparse teachers: top-k (bucket / renormalised tail) and sampled tokens
# --------------------------------------------------------------------------------------------
def _reference_sparse(s, ids, tlp, mask, temperature, kind, beta, tail):
    """The sparse divergence written out row by row in float64, 0 log 0 = 0, no shared code."""
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for t in range(s.shape[1]):
            if not mask[b, t]:
                continue
            q_full = torch.softmax(s[b, t].double() / temperature, -1)
            q = q_full[ids[b, t]]
            p = tlp[b, t].double().exp()
            if tail == "bucket":
                p = torch.cat([p, (1 - p.sum()).clamp_min(0).reshape(1)])
                q = torch.cat([q, (1 - q.sum()).clamp_min(0).reshape(1)])
            else:
                p, q = p / p.sum(), q / q.sum()

            def kl(a, c):
                keep = a > 0
                return float((a[keep] * (a[keep].log() - c[keep].log())).sum())
            if kind == "forward_kl":
                d = kl(p, q)
            elif kind == "reverse_kl":
                d = kl(q, p)
            else:
                m = beta * p + (1 - beta) * q
                d = beta * kl(p, m) + (1 - beta) * kl(q, m)
            total += d
            n += 1
    return total * temperature ** 2 / max(n, 1)


def _sparse_case(B=2, T=6, V=40, k=7, seed=0, temperature=2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g) * 2
    t = torch.randn(B, T, V, generator=g) * 2
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    tlp_full = torch.log_softmax(t / temperature, -1)
    ids = torch.topk(tlp_full, k, dim=-1).indices
    return s, t, mask, ids, tlp_full.gather(-1, ids)


@pytest.mark.parametrize("kind", losses.KD_KINDS)
@pytest.mark.parametrize("tail", losses.SPARSE_TAILS)
def test_sparse_with_every_id_kept_equals_the_dense_divergence(kind, tail):
    s, t, mask, _, _ = _sparse_case()
    perm = torch.argsort(torch.rand(2, 6, 40), -1)  # every id, in any order
    tlp = torch.log_softmax(t / 2.0, -1).gather(-1, perm)
    dense = losses.kd_divergence(s, t, mask, temperature=2.0, kind=kind, beta=0.3)
    sparse = losses.sparse_kd_divergence(s, perm, tlp, mask, temperature=2.0, kind=kind, beta=0.3, tail=tail)
    assert float(sparse) == pytest.approx(float(dense), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", losses.KD_KINDS)
@pytest.mark.parametrize("tail", losses.SPARSE_TAILS)
def test_sparse_matches_a_row_by_row_reference(kind, tail):
    s, _, mask, ids, tlp = _sparse_case()
    got = losses.sparse_kd_divergence(s, ids, tlp, mask, temperature=2.0, kind=kind, beta=0.3, tail=tail)
    want = _reference_sparse(s, ids, tlp, mask, 2.0, kind, 0.3, tail)
    assert float(got) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert want > 0


def test_bucket_and_renormalised_tails_differ_and_both_vanish_on_the_teacher():
    s, t, mask, ids, tlp = _sparse_case()
    bucket = losses.sparse_kd_divergence(s, ids, tlp, mask, temperature=2.0, tail="bucket")
    renorm = losses.sparse_kd_divergence(s, ids, tlp, mask, temperature=2.0, tail="renormalize")
    assert float(bucket) != pytest.approx(float(renorm), rel=1e-3)
    for tail in losses.SPARSE_TAILS:  # the student that is the teacher has nothing to learn
        same = losses.sparse_kd_divergence(t, ids, tlp, mask, temperature=2.0, tail=tail)
        assert abs(float(same)) < 1e-5


def test_sparse_chunks_give_the_same_loss_and_gradient():
    s, _, mask, ids, tlp = _sparse_case(B=3, T=9)
    grads = []
    for chunk in (None, 4):
        x = s.clone().requires_grad_(True)
        loss = losses.sparse_kd_divergence(x, ids, tlp, mask, temperature=2.0, kind="jsd", chunk_size=chunk,
                                           num_items=11)
        loss.backward()
        grads.append((loss.item(), x.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-7)
    assert grads[0][1][~mask].abs().sum() == 0 and grads[0][1][mask].abs().sum() > 0


def test_sparse_at_a_smollm_sized_vocabulary():
    V, k = 49_152, 16
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, 3, V, generator=g) * 3
    t = torch.randn(1, 3, V, generator=g) * 3
    mask = torch.tensor([[True, False, True]])
    tlp_full = torch.log_softmax(t / 2.0, -1)
    ids = torch.topk(tlp_full, k, -1).indices
    for tail in losses.SPARSE_TAILS:
        got = losses.sparse_kd_divergence(s, ids, tlp_full.gather(-1, ids), mask, temperature=2.0, tail=tail)
        want = _reference_sparse(s, ids, tlp_full.gather(-1, ids), mask, 2.0, "forward_kl", 0.5, tail)
        assert float(got) == pytest.approx(want, rel=1e-4)


def test_sparse_with_nothing_masked_is_an_exact_zero_with_a_graph():
    s, _, mask, ids, tlp = _sparse_case()
    x = s.clone().requires_grad_(True)
    loss = losses.sparse_kd_divergence(x, ids, tlp, torch.zeros_like(mask), temperature=2.0)
    loss.backward()
    assert float(loss) == 0.0 and x.grad.abs().sum() == 0


def test_sparse_rejects_bad_arguments_by_name():
    s, _, mask, ids, tlp = _sparse_case()
    with pytest.raises(ValueError, match="tail"):
        losses.sparse_kd_divergence(s, ids, tlp, mask, tail="drop")
    with pytest.raises(ValueError, match="do not line up"):
        losses.sparse_kd_divergence(s, ids[:, :, :3], tlp, mask)
    with pytest.raises(ValueError, match="integer token ids"):
        losses.sparse_kd_divergence(s, ids.float(), tlp, mask)


def _draw(tlp_full, n_samples, g):
    """Distinct sampled ids with their counts, as the sampled cache stores them (padded with count 0)."""
    B, T, V = tlp_full.shape
    draws = torch.multinomial(tlp_full.exp().reshape(-1, V), n_samples, replacement=True, generator=g)
    counts = torch.zeros(B * T, V).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float))
    ids = torch.argsort(counts, -1, descending=True)[:, :n_samples]
    c = counts.gather(1, ids)
    return ids.reshape(B, T, -1), c.reshape(B, T, -1)


def test_sampled_estimator_is_unbiased_for_the_forward_kl_and_its_gradient():
    s, t, mask, _, _ = _sparse_case(B=1, T=3, V=12)
    mask[:] = True
    tlp_full = torch.log_softmax(t / 2.0, -1)
    x = s.clone().requires_grad_(True)
    dense = losses.kd_divergence(x, t, mask, temperature=2.0)
    (g_dense,) = torch.autograd.grad(dense, x)
    g = torch.Generator().manual_seed(0)
    values, grads = [], []
    for _ in range(3000):
        ids, counts = _draw(tlp_full, 4, g)
        est = losses.sampled_kd_divergence(x, ids, tlp_full.gather(-1, ids), counts, mask, temperature=2.0)
        (g_est,) = torch.autograd.grad(est, x)
        values.append(float(est))
        grads.append(g_est)
    mean = sum(values) / len(values)
    sd = torch.tensor(values).std().item() / len(values) ** 0.5
    assert abs(mean - float(dense)) < 4 * sd + 1e-4, (mean, float(dense), sd)
    g_mean = torch.stack(grads).mean(0)
    assert torch.allclose(g_mean, g_dense, atol=0.02), (g_mean - g_dense).abs().max()


def test_sampled_counts_must_match_the_ids():
    s, _, mask, ids, tlp = _sparse_case()
    with pytest.raises(ValueError, match="counts"):
        losses.sampled_kd_divergence(s, ids, tlp, torch.ones(2, 6, 3), mask)
