"""On-policy distillation (GKD): the student's sampled answers, our loss on them against TRL's generalized JSD, and
the trainer taking a fraction lmbda of its batches on-policy."""
import copy
import os
import shutil

import pytest
import torch

from distill.core import params
from distill.kd.onpolicy import OnPolicy, completion_batch, prompts_of, sample_answers
from distill.kd.trainer import LossConfig, onpolicy_batch_loss
from distill.parts import data, models
from distill.study import training


def test_prompts_are_the_tokens_before_the_first_answer_label():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
             "labels": torch.tensor([[-100, -100, 7, 8, -100], [-100, -100, -100, -100, -100]])}
    assert [p.tolist() for p in prompts_of(batch)] == [[5, 6], [5, 6, 9]]  # no answer: the whole real row


def test_a_sampled_answer_ends_after_its_first_eos_and_only_it_is_labelled():
    prompts = [torch.tensor([5, 6]), torch.tensor([5, 6, 9])]
    completions = torch.tensor([[11, 2, 12, 13], [14, 15, 16, 17]])  # eos 2 in row 0; row 1 runs to the budget
    b = completion_batch(prompts, completions, eos_token_id=[2, 99], pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 11, 2, 0, 0, 0], [5, 6, 9, 14, 15, 16, 17]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert b["labels"].tolist() == [[-100, -100, 11, 2, -100, -100, -100], [-100, -100, -100, 14, 15, 16, 17]]


def test_sampling_settings_are_checked():
    for bad in (dict(lmbda=1.5), dict(temperature=0.0), dict(max_new_tokens=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            OnPolicy(**bad)
    with pytest.raises(params.ParamsError, match="lmbda: 0.5 .* needs gamma_kl > 0"):
        params.from_mapping({"lmbda": 0.5, "gamma_kl": 0.0, "beta_mse": 0.0})
    p = params.from_mapping({"lmbda": 0.5, "beta_mse": 0.0, "teacher_cache": "sampled"})
    assert p.needs_live_teacher  # a cache holds the gold answers' targets, not the samples'


@pytest.fixture(scope="module")
def tiny(tiny_paths, squad_dir):
    tok = models.load_tokenizer(str(tiny_paths[0]))
    rows = data.load_squad("train", str(squad_dir), pool_rows=40)
    feats = data.encode_examples(rows, tok, 160, seed=0).features
    teacher = models.freeze(models.load_model(str(tiny_paths[0])))
    student = models.load_model(str(tiny_paths[1]))
    return tok, feats, teacher, student


@pytest.mark.parametrize("kind, beta, trl_beta", [("forward_kl", 0.5, 0.0), ("reverse_kl", 0.5, 1.0),
                                                  ("jsd", 0.5, 0.5), ("jsd", 0.9, 0.9)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_onpolicy_loss_is_trls_generalized_jsd_times_t_squared(tiny, kind, beta, trl_beta, temperature):
    """On one batch the student sampled (seeded, so the same sample twice), our on-policy loss equals TRL's
    GKDTrainer.generalized_jsd_loss (TRL's beta: 0 forward KL, 1 reverse KL) x T^2, a mean over sampled tokens."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer  # test-only dependency, pinned in constraints.txt

    tok, feats, teacher, student = tiny
    # in float64: the students' and teacher's distributions are close, and a JSD of close distributions loses
    # float32's digits to cancellation in any summation order
    teacher, student = copy.deepcopy(teacher).double(), copy.deepcopy(student).double()
    batch = data.TrainCollator(tok.pad_token_id)(feats[:4])
    cfg = LossConfig(alpha_ce=1.0, gamma_kl=1.0, beta_mse=0.0, temperature=temperature, kd_kind=kind, jsd_beta=beta,
                     distill_positions="all")  # on-policy batches take the answer rows and no CE, whatever is set
    onpolicy = OnPolicy(lmbda=1.0, temperature=1.0, max_new_tokens=6, pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    ours = onpolicy_batch_loss(student, student, batch, cfg, onpolicy, teacher=teacher)
    torch.manual_seed(0)
    sampled = sample_answers(student, batch, onpolicy)
    n_sampled = int((sampled["labels"][:, 1:] != -100).sum())
    assert n_sampled > 4 and set(ours.terms) == {"kd"}
    with torch.no_grad():
        s = student(input_ids=sampled["input_ids"], attention_mask=sampled["attention_mask"]).logits
        t = teacher(input_ids=sampled["input_ids"], attention_mask=sampled["attention_mask"]).logits
    assert s.shape == t.shape
    trl = GKDTrainer.generalized_jsd_loss(s[:, :-1], t[:, :-1], labels=sampled["labels"][:, 1:], beta=trl_beta,
                                          temperature=temperature)
    assert float(ours.loss) == pytest.approx(float(trl) * temperature ** 2, rel=1e-9)
    assert float(ours.loss) > 0


def test_an_onpolicy_batch_in_a_window_weighs_its_share_of_the_windows_answer_tokens(tiny):
    tok, feats, teacher, student = tiny
    batch = data.TrainCollator(tok.pad_token_id)(feats[:4])
    cfg = LossConfig(alpha_ce=1.0, gamma_kl=1.0, beta_mse=0.0, distill_positions="answer")
    onpolicy = OnPolicy(lmbda=1.0, max_new_tokens=6, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    gold = int((batch["labels"][:, 1:] != -100).sum())
    losses_at = {}
    for window in (None, 4 * gold):  # alone, and one of four equal micro-batches
        torch.manual_seed(0)
        losses_at[window] = float(onpolicy_batch_loss(student, student, batch, cfg, onpolicy, teacher=teacher,
                                                      num_items_in_batch=window).loss)
    assert losses_at[4 * gold] == pytest.approx(losses_at[None] / 4, rel=1e-5)


def test_the_trainer_answers_lmbda_of_its_batches_itself_and_resumes_drawing_as_the_whole_run(tiny_paths, squad_dir,
                                                                                               tmp_path):
    tok = models.load_tokenizer(str(tiny_paths[0]))
    rows = data.load_squad("train", str(squad_dir), pool_rows=60)
    feats = data.encode_examples(rows, tok, 160, seed=0).features
    base = dict(run_name="t", max_steps=6, batch_size=4, eval_steps=3, learning_rate=1.0e-2, warmup_ratio=0.0,
                use_lora=True, lora_r=4, lora_alpha=8, alpha_ce=1.0, gamma_kl=1.0, beta_mse=0.0, lmbda=0.5,
                onpolicy_max_new_tokens=4, logging_steps=1)

    def run(folder, **over):
        p = params.from_mapping({**base, "output_dir": str(folder), **over})
        torch.manual_seed(0)
        teacher = models.freeze(models.load_model(str(tiny_paths[0])))
        student = models.apply_lora(models.load_model(str(tiny_paths[1])), 4, 8, 0.0)
        cfg = training.loss_config(p, student.config.num_hidden_layers, teacher.config.num_hidden_layers, len(tok))
        return training.train(p, student, tok, feats[:16], feats[16:24], folder, teacher=teacher, cfg=cfg,
                              onpolicy=training.onpolicy_config(p, tok))

    whole = run(tmp_path / "whole")
    logged = [e for e in whole.log_history if "train_onpolicy" in e]
    drawn = [e["train_onpolicy"] for e in logged]
    assert len(drawn) == 6 and 0 < sum(drawn) < 6, drawn  # some steps on-policy, some on the gold answers
    assert all(("train_onpolicy_kd" in e) == (d == 1) and ("train_ce" in e) == (d == 0) for e, d in zip(logged, drawn))
    with pytest.raises(ValueError, match="needs gamma_kl > 0 and the live teacher"):
        training.train(params.from_mapping({**base, "output_dir": str(tmp_path / "x")}), models.load_model(
            str(tiny_paths[1])), tok, feats[:4], [], tmp_path / "x", teacher=None,
            cfg=LossConfig(gamma_kl=1.0), onpolicy=OnPolicy(lmbda=0.5))
    # cut back to checkpoint 3 (a crash after it), the run resumes drawing the same batches on-policy as the whole
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "whole", part)
    for later in ("checkpoint-6", "best"):
        shutil.rmtree(part / later)
    resumed = run(part, resume=True)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "checkpoint-3"
    assert [e["train_onpolicy"] for e in resumed.log_history if "train_onpolicy" in e] == drawn
    a = [e["loss"] for e in whole.log_history if "loss" in e]
    assert [e["loss"] for e in resumed.log_history if "loss" in e] == pytest.approx(a, rel=1e-5)
