"""The teacher cache: filled once per example, reused, checked, and equal to the live teacher's sparse targets."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.core import params, procs
from distill.kd import losses
from distill.kd.trainer import DistillationTrainer
from distill.parts import data, models, teacher_answers, teacher_cache
from distill.study import cache, layout, steps, training


@pytest.fixture(scope="module")
def setup(tiny_paths, squad_dir):
    tok = models.load_tokenizer(str(tiny_paths[0]))
    rows = data.load_squad("train", str(squad_dir), pool_rows=40)
    feats = data.encode_examples(rows, tok, 96, seed=0).features
    teacher = models.freeze(models.load_model(str(tiny_paths[0])))
    return tiny_paths, tok, feats, teacher


def config(tiny_paths, tok, fmt="topk", k=8, temperature=2.0):
    return teacher_cache.cache_config(str(tiny_paths[0]), tok, 96, temperature, fmt, k)


def test_fill_reuses_examples_and_writes_one_view_per_training_run(setup, tmp_path, monkeypatch):
    paths_, tok, feats, teacher = setup
    store = tmp_path / "store"
    cfg = config(paths_, tok)
    released = []
    monkeypatch.setattr(procs, "release_freed_memory", lambda: released.append(1))
    first = teacher_cache.fill(store, cfg, {"run_a": feats[:10]}, teacher, "cpu", 4, tok.pad_token_id)
    assert len(released) == 3  # after each of the 3 teacher batches
    assert first.computed_positions == sum(len(f["input_ids"]) - 1 for f in feats[:10])
    assert first.cached_positions == 0 and first.bytes_per_token > 8 * 6 * 0.9
    view_a = (store / "views" / "run_a.json").read_text()
    calls = []
    hook = teacher.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]),
                                         with_kwargs=True)
    try:
        second = teacher_cache.fill(store, cfg, {"run_a": feats[:10], "run_b": feats[5:15]}, teacher, "cpu", 4,
                                    tok.pad_token_id)
    finally:
        hook.remove()
    assert second.cached_positions == first.computed_positions  # every example of run_a came from the cache
    assert second.computed_positions == sum(len(f["input_ids"]) - 1 for f in feats[10:15])
    assert calls == [4, 1]  # the teacher ran on the 5 new examples only
    assert (store / "views" / "run_a.json").read_text() == view_a  # earlier training stays up to date
    assert json.loads((store / "views" / "run_b.json").read_text())["run"] == "run_b"


def test_cached_targets_equal_the_live_teachers_top_k(setup, tmp_path):
    paths_, tok, feats, teacher = setup
    store = tmp_path / "store"
    teacher_cache.fill(store, config(paths_, tok), {"r": feats[:4]}, teacher, "cpu", 2, tok.pad_token_id)
    cached = teacher_cache.CachedTargets(store / "views" / "r.json")
    f = feats[2]
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1, :len(tok)]
    live = torch.topk(torch.log_softmax(logits / 2.0, -1), 8, dim=-1)
    got = cached.lookup(f["input_ids"])
    assert torch.equal(got["ids"].long(), live.indices)
    assert torch.allclose(got["logprobs"].float(), live.values, atol=2e-3)  # fp16 storage
    with pytest.raises(KeyError, match="not in the teacher cache"):
        cached.lookup([1, 2, 3])


def test_sampled_targets_hold_counts_of_k_draws(setup, tmp_path):
    paths_, tok, feats, teacher = setup
    store = tmp_path / "store"
    teacher_cache.fill(store, config(paths_, tok, fmt="sampled", k=12), {"r": feats[:3]}, teacher, "cpu", 2,
                       tok.pad_token_id)
    got = teacher_cache.CachedTargets(store / "views" / "r.json").lookup(feats[0]["input_ids"])
    assert set(got) == {"ids", "logprobs", "counts", "first_row"} and got["first_row"] == 0
    assert (got["counts"].long().sum(-1) == 12).all()
    nonzero = got["counts"] > 0
    assert all(len(set(r[m].tolist())) == int(m.sum()) for r, m in zip(got["ids"], nonzero))  # distinct drawn ids


def test_another_config_rebuilds_and_a_corrupt_shard_is_detected_and_recomputed(setup, tmp_path):
    paths_, tok, feats, teacher = setup
    store = tmp_path / "store"
    teacher_cache.fill(store, config(paths_, tok), {"r": feats[:4]}, teacher, "cpu", 2, tok.pad_token_id)
    logs = []
    again = teacher_cache.fill(store, config(paths_, tok, temperature=1.0), {"r": feats[:4]}, teacher, "cpu", 2,
                               tok.pad_token_id, log=logs.append)
    assert again.cached_positions == 0 and any("other temperature" in line for line in logs)
    shard = next((store / "shards").glob("*.safetensors"))
    with pytest.raises(teacher_cache.CacheMismatch, match="other temperature"):
        teacher_cache.CachedTargets(store / "views" / "r.json", expected=config(paths_, tok))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    with pytest.raises(teacher_cache.CacheMismatch, match="truncated or corrupt"):
        teacher_cache.CachedTargets(store / "views" / "r.json")
    fixed = teacher_cache.fill(store, config(paths_, tok, temperature=1.0), {"r": feats[:4]}, teacher, "cpu", 2,
                               tok.pad_token_id)
    assert fixed.computed_positions == again.computed_positions and fixed.cached_positions == 0
    teacher_cache.CachedTargets(store / "views" / "r.json").lookup(feats[0]["input_ids"])


def test_a_step_from_the_cache_runs_no_teacher_and_gives_the_sparse_loss(setup, tmp_path):
    (t_path, s_path), tok, feats, teacher = setup
    store = tmp_path / "store"
    teacher_cache.fill(store, config((t_path, s_path), tok), {"r": feats[:4]}, teacher, "cpu", 4, tok.pad_token_id)
    cached = teacher_cache.CachedTargets(store / "views" / "r.json")
    p = params.from_mapping(dict(run_name="t", gamma_kl=1.0, beta_mse=0.0, teacher_cache="topk", teacher_cache_k=8,
                                 temperature=2.0))
    student = models.load_model(str(s_path))
    cfg = training.loss_config(p, 2, 4, len(tok))
    collator = teacher_cache.CachedTeacherCollator(data.TrainCollator(tok.pad_token_id), cached)
    batch = collator(feats[:4])
    assert batch["teacher_ids"].shape == (*batch["input_ids"].shape[:1], batch["input_ids"].shape[1] - 1, 8)
    trainer = DistillationTrainer(model=student, args=training.training_args(p, tmp_path / "x", 1, 1e-3,
                                                                             evaluate=False),
                                  teacher=None, loss_config=cfg)
    student.train()
    loss = trainer.compute_loss(student, batch)
    logged = trainer.meter.pop("train", 1)
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    top = torch.topk(torch.log_softmax(t_logits / 2.0, -1), 8, -1)
    kd_mask = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
    answers = int((batch["labels"][:, 1:] != -100).sum())
    want = losses.sparse_kd_divergence(s_logits, top.indices, top.values.half().float(), kd_mask, temperature=2.0,
                                       num_items=answers * cfg.positions_per_answer_token)
    assert logged["kd"] == pytest.approx(float(want), rel=1e-3)
    assert torch.isfinite(loss)


def test_an_answer_only_cache_stores_the_answer_rows_and_places_them_back(setup, tmp_path):
    """positions "answer": only the rows that predict answer tokens are stored (and projected), and the collator
    puts them at their rows; they equal the all-rows cache's targets there."""
    paths_, tok, feats, teacher = setup
    every = tmp_path / "every"
    teacher_cache.fill(every, config(paths_, tok), {"r": feats[:4]}, teacher, "cpu", 2, tok.pad_token_id)
    answers = tmp_path / "answers"
    cfg = teacher_cache.cache_config(str(paths_[0]), tok, 96, 2.0, "topk", 8, positions="answer")
    report = teacher_cache.fill(answers, cfg, {"r": feats[:4]}, teacher, "cpu", 2, tok.pad_token_id)
    answer_rows = [sum(1 for t in f["labels"][1:] if t != -100) for f in feats[:4]]
    assert report.computed_positions >= sum(answer_rows)
    assert report.computed_positions < sum(len(f["input_ids"]) - 1 for f in feats[:4]) / 3
    collate = lambda store: teacher_cache.CachedTeacherCollator(  # noqa: E731
        data.TrainCollator(tok.pad_token_id), teacher_cache.CachedTargets(store / "views" / "r.json"))(feats[:4])
    full, sparse = collate(every), collate(answers)
    rows = sparse["labels"][:, 1:] != -100
    assert int(rows.sum()) == sum(answer_rows)
    assert torch.equal(sparse["teacher_ids"][rows], full["teacher_ids"][rows])
    assert torch.allclose(sparse["teacher_logprobs"][rows], full["teacher_logprobs"][rows], atol=2e-3)
    with pytest.raises(ValueError, match="positions"):
        teacher_cache.cache_config(str(paths_[0]), tok, 96, 2.0, "topk", 8, positions="prompt")


# --------------------------------------------------------------------------------------------
# the teacher's precision: a 4-bit teacher's targets are not a float32 teacher's
# --------------------------------------------------------------------------------------------
def test_a_float32_teachers_store_keeps_its_name_and_config_and_a_4bit_teachers_is_marked(setup):
    paths_, tok, _, _ = setup
    p = params.load("smoke", overrides=["teacher_load_in_4bit=false", "distill_positions=answer"])
    assert p.teacher_precision == "float32"
    assert teacher_cache.config_name(p) == f"{p.teacher_cache}-k{p.teacher_cache_k}-T{p.temperature:g}-L{p.max_length}-answer"
    assert set(config(paths_, tok)) == {"teacher", "tokenizer", "vocab", "chat_template", "max_length", "temperature",
                                        "format", "k", "positions"}  # the keys (so the hashes) of the stores before
    nf4 = p.replace(teacher_load_in_4bit=True)
    dq = nf4.replace(bnb_double_quant=True, bnb_compute_dtype="bfloat16")
    assert teacher_cache.config_name(nf4) == teacher_cache.config_name(p) + "-nf4-float32"
    assert teacher_cache.config_name(dq) == teacher_cache.config_name(p) + "-nf4dq-bfloat16"
    assert teacher_answers.store_dir(Path("r"), dq).name == f"answers-L{p.max_length}-N{p.max_new_tokens}-nf4dq-bfloat16"
    marked = teacher_cache.cache_config(str(paths_[0]), tok, 96, 2.0, "topk", 8, precision=nf4.teacher_precision)
    assert marked == {**config(paths_, tok), "teacher_precision": "nf4-float32"}
    plain = teacher_answers.answers_config(str(paths_[0]), tok, 96, 4, 0)
    assert "teacher_precision" not in plain
    assert teacher_answers.answers_config(str(paths_[0]), tok, 96, 4, 0, "nf4-float32") == {
        **plain, "teacher_precision": "nf4-float32"}


def test_the_cache_stage_fills_each_teachers_store_with_that_teacher(monkeypatch, tmp_path):
    """Two training runs, one taught by the float32 teacher and one by the same weights in NF4: the stage loads each
    teacher once and each store holds its own teacher's targets (a store named for float32 never gets NF4 ones)."""
    import yaml

    base = params.load("smoke", overrides=[
        f"output_dir={tmp_path}", "teacher_finetune=false", "teacher_load_in_4bit=false", "torch_threads=1",
        "teacher_cache=topk", "teacher_cache_k=4", "beta_mse=0", "train_size=6", "distill_positions=all"])
    runs = [base.replace(run_name="fp32"), base.replace(run_name="nf4", teacher_load_in_4bit=True)]
    monkeypatch.setattr(cache, "training_runs", lambda p: runs)
    loaded = []
    real_load = steps.load_teacher
    monkeypatch.setattr(steps, "load_teacher", lambda p, device: loaded.append(p.teacher_precision) or real_load(p, device))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(base.to_dict()))
    assert cache.fill_teacher_cache(base, params_file) == 0
    assert sorted(loaded) == ["float32", "nf4-float32"]
    got = {r.run_name: teacher_cache.CachedTargets(teacher_cache.view_file(layout.base_run_dir(r), r)) for r in runs}
    assert got["fp32"].config.get("teacher_precision") is None and got["nf4"].config["teacher_precision"] == "nf4-float32"
    assert got["fp32"].view_path.parent.parent != got["nf4"].view_path.parent.parent
    keys = sorted(got["fp32"].entries)
    assert keys == sorted(got["nf4"].entries) and keys
    differs = [not torch.equal(got["fp32"].lookup_key(k)["logprobs"], got["nf4"].lookup_key(k)["logprobs"]) for k in keys]
    assert any(differs)  # NF4 moves the teacher's log-probabilities


# One process making sampled targets from [positions, vocabulary] logits batch after batch, as the cache stage does
# (SmolLM2's vocabulary, 8 examples of 90-160 positions per batch), keeping only the small targets.
_HEAP_PROBE = """
import os, random, sys
import torch
from distill.core import procs
from distill.parts import teacher_cache
def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
torch.set_num_threads(1)
rng, kept, base = random.Random(0), [], rss()
for b in range(5):
    ns = [rng.randint(90, 160) for _ in range(8)]
    logits, at = torch.randn(sum(ns), 49152), 0
    for n in ns:
        kept.append(teacher_cache.sparse_targets(logits[at:at + n], 2.0, "sampled", 12, torch.Generator().manual_seed(n)))
        at += n
    del logits
grown = rss() - base
procs.release_freed_memory()
print(grown >> 20, (rss() - base) >> 20)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the process's memory from /proc")
def test_freed_logits_go_back_to_the_system():
    """Without release_freed_memory the cache stage of the default profile grew to 24 GB and was killed: the freed
    per-example [positions, vocabulary] tensors stayed on glibc's heap between the small targets kept."""
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True)
    grown_mb, after_mb = map(int, out.stdout.split())
    if grown_mb < 150:
        pytest.skip(f"this allocator reuses the freed tensors (grew {grown_mb} MB): nothing to give back")
    assert after_mb < grown_mb / 4, f"grew {grown_mb} MB; {after_mb} MB still held after release_freed_memory"
