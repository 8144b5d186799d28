"""The DistillationTrainer on the tiny models: real steps, a frozen teacher, LoRA-only updates, exact
gradient accumulation, resume after a crash, NaN stops."""
import shutil

import pytest
import torch

from distill.core import params
from distill.kd import losses
from distill.kd.trainer import DistillationTrainer
from distill.parts import data, models
from distill.study import training


@pytest.fixture(scope="module")
def setup(tiny_paths, squad_dir):
    tok = models.load_tokenizer(str(tiny_paths[0]))
    rows = data.load_squad("train", str(squad_dir), pool_rows=60)
    feats = data.encode_examples(rows, tok, 160, seed=0).features
    return tiny_paths, tok, feats[:16], feats[16:24]


def make(setup, tmp_path, use_lora=True, **overrides):
    (t_path, s_path), tok, train, evalf = setup
    base = dict(run_name="t", output_dir=str(tmp_path), max_steps=4, batch_size=4, eval_steps=2, learning_rate=1.0e-2,
                warmup_ratio=0.0, use_lora=use_lora, lora_r=4, lora_alpha=8, alpha_ce=1.0, gamma_kl=1.0, beta_mse=0.5)
    p = params.from_mapping({**base, **overrides})
    torch.manual_seed(0)
    teacher = models.freeze(models.load_model(str(t_path)))
    student = models.load_model(str(s_path))
    if use_lora:
        student = models.apply_lora(student, p.lora_r, p.lora_alpha, 0.0)
    cfg = training.loss_config(p, student.config.num_hidden_layers, teacher.config.num_hidden_layers, len(tok))
    proj = losses.HiddenProjection(student.config.hidden_size, teacher.config.hidden_size) if p.beta_mse else None
    return p, teacher, student, tok, train, evalf, cfg, proj


def test_steps_lower_the_loss_and_touch_only_lora_and_projection(setup, tmp_path):
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, max_steps=8, eval_steps=4)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    proj_before = proj.linear.weight.detach().clone()
    res = training.train(p, student, tok, train, evalf, tmp_path / "run", teacher=teacher, cfg=cfg, projection=proj)
    losses_logged = [e["loss"] for e in res.log_history if "loss" in e]
    assert losses_logged[-1] < losses_logged[0]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(q.grad is None and not q.requires_grad for q in teacher.parameters())
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert not torch.equal(proj_before, proj.linear.weight)
    entry = next(e for e in res.log_history if "loss" in e)
    assert {"train_ce", "train_kd", "train_hidden", "train_total"} <= set(entry)
    ev = next(e for e in res.log_history if "eval_loss" in e)
    assert ev["eval_loss"] == pytest.approx(ev["eval_ce"], rel=1e-4)  # checkpoints are chosen on answer CE
    assert ev["eval_total"] == pytest.approx(ev["eval_ce"] + ev["eval_kd"] + 0.5 * ev["eval_hidden"], rel=1e-4)
    assert (res.best_dir / "adapter_config.json").exists() and (res.best_dir / "hidden_projection.safetensors").exists()


def test_ce_only_runs_no_teacher(setup, tmp_path, monkeypatch):
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, gamma_kl=0.0, beta_mse=0.0, max_steps=2)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    training.train(p, student, tok, train, evalf, tmp_path / "run", teacher=teacher, cfg=cfg)
    assert calls == []


def test_ce_term_trains_the_student(setup, tmp_path):
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, gamma_kl=0.0, beta_mse=0.0)
    batch = data.TrainCollator(tok.pad_token_id)(train[:4])
    trainer = DistillationTrainer(model=student, args=training.training_args(p, tmp_path / "x", 1, 1e-3, evaluate=False),
                                  loss_config=cfg)
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    lora_grads = [q.grad for n, q in student.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_gradient_accumulation_is_exact(setup, tmp_path, positions):
    """Two micro-batches with the window's token count give the full batch's loss and gradient."""
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, beta_mse=0.0, distill_positions=positions)
    cfg.positions_per_answer_token = training.positions_per_answer_token(train)
    trainer = DistillationTrainer(model=student, args=training.training_args(p, tmp_path / "x", 1, 1e-3, evaluate=False),
                                  teacher=teacher, loss_config=cfg)
    collate = data.TrainCollator(tok.pad_token_id)
    full, halves = collate(train[:4]), [collate(train[:1]), collate(train[1:4])]  # unequal micro-batches
    n_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in halves)
    student.train()

    def grads(batches):
        student.zero_grad()
        total = sum(trainer.compute_loss(student, b, num_items_in_batch=torch.tensor(n_items)) for b in batches)
        total.backward()
        return float(total), [q.grad.clone() for q in student.parameters() if q.requires_grad]

    loss_full, g_full = grads([full])
    loss_acc, g_acc = grads(halves)
    assert loss_acc == pytest.approx(loss_full, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_full, g_acc))
    assert any(g.abs().sum() > 0 for g in g_full)


def test_chunked_divergence_gives_the_same_loss_and_gradient(setup, tmp_path, monkeypatch):
    """kd_chunk_size reaches the divergence and only bounds memory: loss and LoRA gradients do not move."""
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, beta_mse=0.0, kd_chunk_size=7)
    assert cfg.kd_chunk_size == 7
    seen, real = [], losses.kd_divergence
    monkeypatch.setattr(losses, "kd_divergence", lambda *a, **k: seen.append(k["chunk_size"]) or real(*a, **k))
    batch = data.TrainCollator(tok.pad_token_id)(train[:4])
    student.train()

    def loss_and_grads(chunk):
        cfg.kd_chunk_size = chunk
        trainer = DistillationTrainer(model=student, args=training.training_args(p, tmp_path / "x", 1, 1e-3, evaluate=False),
                                      teacher=teacher, loss_config=cfg)
        student.zero_grad()
        loss = trainer.compute_loss(student, batch)
        loss.backward()
        return float(loss), [q.grad.clone() for q in student.parameters() if q.requires_grad]

    whole, g_whole = loss_and_grads(None)
    chunked, g_chunked = loss_and_grads(7)
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_whole, g_chunked))
    assert any(g.abs().sum() > 0 for g in g_whole)
    assert seen == [None, 7]


def crash_at_step_3(setup, tmp_path, monkeypatch):
    """Train 4 steps (checkpoints every 2) into tmp_path/run and crash during step 3; (params, loss config,
    projection) of that run."""
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, max_steps=4, eval_steps=2)
    original = DistillationTrainer.compute_loss

    def crash(self, *a, **k):
        if self.model.training and self.state.global_step == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        training.train(p, student, tok, train, evalf, tmp_path / "run", teacher=teacher, cfg=cfg, projection=proj)
    monkeypatch.setattr(DistillationTrainer, "compute_loss", original)
    return p, cfg, proj


def test_resume_after_a_crash_continues_from_the_checkpoint(setup, tmp_path, monkeypatch):
    crash_at_step_3(setup, tmp_path, monkeypatch)
    p2, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, max_steps=4, eval_steps=2, resume=True)
    res = training.train(p2, student, tok, train, evalf, tmp_path / "run", teacher=teacher, cfg=cfg, projection=proj)
    assert res.resumed_from is not None and res.resumed_from.name == "checkpoint-2"
    steps = [e["step"] for e in res.log_history if "loss" in e]
    assert steps == [1, 2, 3, 4] and res.trainer.state.global_step == 4


def test_a_checkpoint_made_with_other_params_or_half_written_is_never_resumed(setup, tmp_path, monkeypatch):
    p, cfg, proj = crash_at_step_3(setup, tmp_path, monkeypatch)
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").exists()
    # a kill during the save of checkpoint-2 leaves its optimizer empty and no state: it is never read
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "run", half)
    (half / "checkpoint-2" / "optimizer.pt").write_bytes(b"")
    (half / "checkpoint-2" / "trainer_state.json").unlink()
    assert training.checkpoint_to_resume(p, half, cfg, (), proj) is None
    assert not (half / "checkpoint-2").exists()
    # another learning rate: the old run's checkpoint is not continued, and it is removed
    p2, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, max_steps=4, eval_steps=2,
                                                              learning_rate=5.0e-3)
    assert training.checkpoint_to_resume(p2, tmp_path / "run", cfg, (), proj) is None
    res = training.train(p2, student, tok, train, evalf, tmp_path / "run", teacher=teacher, cfg=cfg, projection=proj)
    assert res.resumed_from is None
    assert [e["step"] for e in res.log_history if "loss" in e] == [1, 2, 3, 4]


def test_nan_stops_with_step_and_term(setup, tmp_path):
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, beta_mse=0.0)
    with torch.no_grad():
        teacher.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"'kd'.*step 0"):
        training.train(p, student, tok, train, evalf, tmp_path / "run", teacher=teacher, cfg=cfg)


def test_eval_loss_is_the_answer_ce_for_every_variant(setup, tmp_path):
    """Checkpoints are chosen on eval_loss: it must be the answer CE, also when training is pure KD (alpha_ce 0)."""
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, alpha_ce=0.0, beta_mse=0.0)
    trainer = DistillationTrainer(model=student, args=training.training_args(p, tmp_path / "x", 1, 1e-3, evaluate=False),
                                  teacher=teacher, loss_config=cfg)
    batch = data.TrainCollator(tok.pad_token_id)(train[:4])
    with torch.no_grad():
        student.eval()
        evaluated = trainer.compute_loss(student, batch)
        ce = losses.answer_ce(student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["labels"])
        student.train()
        trained = trainer.compute_loss(student, batch)  # pure KD: the divergence, not the CE
    assert float(evaluated) == pytest.approx(float(ce), rel=1e-5)
    assert float(trained) != pytest.approx(float(ce), rel=1e-3)
    logged = trainer.meter.pop("eval", 1)
    assert logged["ce"] == pytest.approx(float(ce), rel=1e-5) and logged["weighted_ce"] == 0.0 and logged["kd"] > 0


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_logits_only_at_the_rows_a_loss_reads_give_the_full_logits_loss(setup, tmp_path, positions):
    """compute_loss projects only the rows its terms read; its loss equals the pure functions on full logits."""
    p, teacher, student, tok, train, evalf, cfg, proj = make(setup, tmp_path, beta_mse=0.0, distill_positions=positions)
    cfg.positions_per_answer_token = 1.3
    trainer = DistillationTrainer(model=student, args=training.training_args(p, tmp_path / "x", 1, 1e-3, evaluate=False),
                                  teacher=teacher, loss_config=cfg)
    batch = data.TrainCollator(tok.pad_token_id)(train[:4])
    student.train()
    projected_rows = []
    student.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: projected_rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    loss = trainer.compute_loss(student, batch)

    labels, attention = batch["labels"], batch["attention_mask"]
    with torch.no_grad():
        s_full = student(input_ids=batch["input_ids"], attention_mask=attention).logits
        t_full = teacher(input_ids=batch["input_ids"], attention_mask=attention).logits
    answer = labels[:, 1:] != -100
    real = attention[:, 1:].bool() & attention[:, :-1].bool()
    kd_mask = answer if positions == "answer" else real
    n_items = int(answer.sum())
    per_item = 1.0 if positions == "answer" else 1.3
    expected = losses.answer_ce(s_full, labels) + losses.kd_divergence(
        s_full[:, :-1], t_full[:, :-1], kd_mask, temperature=cfg.temperature, num_items=n_items * per_item,
        vocab_size=len(tok))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # the vocabulary projection ran on the kept rows only, far fewer than B x T when only answers are read
    assert projected_rows[0] == int(kd_mask.sum())
    if positions == "answer":
        assert projected_rows[0] < labels.numel() / 3
