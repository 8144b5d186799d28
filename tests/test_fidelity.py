"""A teacher's fidelity to a reference teacher: KL, top-1 agreement and the distance between sampled caches."""
import copy
import math

import pytest
import torch

from distill.parts import data, fidelity, models


def test_kl_rows_is_the_textbook_kl_and_zero_for_equal_distributions():
    p = torch.tensor([[0.7, 0.2, 0.1]]).log()
    q = torch.tensor([[0.5, 0.25, 0.25]]).log()
    expected = 0.7 * math.log(0.7 / 0.5) + 0.2 * math.log(0.2 / 0.25) + 0.1 * math.log(0.1 / 0.25)
    assert fidelity.kl_rows(p, q, 1.0).item() == pytest.approx(expected, rel=1e-6)  # the logs were float32
    assert fidelity.kl_rows(p, p, 2.0).item() == pytest.approx(0.0, abs=1e-12)
    # temperature T softens both: the same as KL of the logits divided by T
    assert fidelity.kl_rows(p, q, 2.0).item() == pytest.approx(fidelity.kl_rows(p / 2, q / 2, 1.0).item(), rel=1e-9)
    # the peer: torch's own KL (input = log q, target = log p)
    peer = torch.nn.functional.kl_div(q.double(), p.double(), log_target=True, reduction="sum")
    assert fidelity.kl_rows(p, q, 1.0).item() == pytest.approx(peer.item(), rel=1e-6)


def test_sampled_distance_is_total_variation_of_the_draws():
    a = {"ids": torch.tensor([[3, 1, 0]]), "counts": torch.tensor([[2, 2, 0]], dtype=torch.int16)}
    b = {"ids": torch.tensor([[3, 2, 0]]), "counts": torch.tensor([[3, 1, 0]], dtype=torch.int16)}
    # a: {3: .5, 1: .5}; b: {3: .75, 2: .25} -> TV = .5 * (.25 + .5 + .25)
    assert fidelity.sampled_distance(a, b, 5).item() == pytest.approx(0.5)
    assert fidelity.sampled_distance(a, a, 5).item() == 0.0


def test_a_teacher_compared_with_itself_and_with_a_perturbed_copy(tiny_paths, squad_dir):
    tok = models.load_tokenizer(str(tiny_paths[0]))
    feats = data.encode_examples(data.load_squad("validation", str(squad_dir), 30)[:8], tok, 96, seed=0).features
    teacher = models.freeze(models.load_model(str(tiny_paths[0])))
    kw = dict(temperatures=[1.0, 2.0], cache_temperature=2.0, cache_k=12, pad_id=tok.pad_token_id, batch_size=4, seed=0)
    same = fidelity.compare(teacher, teacher, feats, **kw)
    answer_tokens = sum(sum(1 for t in f["labels"] if t != -100) for f in feats)
    assert same["rows"] == answer_tokens
    assert same["kl"][1.0]["mean"] == pytest.approx(0.0, abs=1e-9) and same["top1_agreement"] == 1.0
    assert same["cache_distance"]["mean"] == 0.0  # the same random numbers and distribution: the same draws
    assert same["cache_noise_floor"]["mean"] > 0.0
    moved = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    got = fidelity.compare(teacher, moved, feats, **kw)
    assert got["kl"][1.0]["mean"] > 1e-4 and got["kl"][1.0]["p90"] >= got["kl"][1.0]["mean"] * 0.5
    assert got["kl"][2.0]["mean"] < got["kl"][1.0]["mean"]  # softer distributions lie closer
    assert got["cache_distance"]["mean"] > 0.0
    # the rows are the answer rows: the first one equals a direct computation
    f = feats[0]
    rows = [t for t in range(len(f["input_ids"]) - 1) if f["labels"][t + 1] != -100]
    ids = torch.tensor([f["input_ids"]])
    with torch.no_grad():
        direct = fidelity.kl_rows(teacher(ids).logits[0, rows], moved(ids).logits[0, rows], 1.0)
    one = fidelity.compare(teacher, moved, feats[:1], **{**kw, "batch_size": 1})
    assert one["kl"][1.0]["mean"] == pytest.approx(direct.mean().item(), rel=1e-4)
