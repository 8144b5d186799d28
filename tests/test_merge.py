"""The merge step: the deployable folder must give the adapter model's logits when loaded alone."""
import hashlib
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from distill.core import params
from distill.parts import data, models
from distill.study import layout, merge, steps


@pytest.fixture
def trained_adapter(tiny_paths, squad_dir, tmp_path):
    """A smoke-profile run folder holding a LoRA adapter with random (non-zero) weights for the distilled variant."""
    p = params.load("params/smoke.yaml").replace(output_dir=str(tmp_path / "run"), teacher_finetune=False)
    source = steps.student_source(p)
    adapted = get_peft_model(models.load_model(source), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                   target_modules=["q_proj", "v_proj"]))
    best = layout.variant_dir(p, "distilled") / "best"
    adapted.save_pretrained(best)
    models.load_tokenizer(source).save_pretrained(best)
    rows = data.load_squad("validation", str(squad_dir), 20)[:3]
    return p, rows


def digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.iterdir()))).hexdigest()


def test_merged_folder_loads_alone_with_the_adapter_logits(trained_adapter):
    p, rows = trained_adapter
    m = merge.merge_variant(p, "distilled", torch.device("cpu"), rows)
    assert m["max_abs_logit_diff"] <= m["tolerance"] and m["reloaded_max_abs_logit_diff"] <= m["tolerance"]
    deployed = AutoModelForCausalLM.from_pretrained(m["deploy_dir"])
    assert not any("lora" in n for n, _ in deployed.named_parameters())
    assert (Path(m["deploy_dir"]) / "generation_config.json").exists()
    # the adapter matters: the base student's logits are far from the deployed model's
    batch = data.pad_batch(data.encode_examples(rows, models.load_tokenizer(m["deploy_dir"]), p.max_length, 0).features, 0)
    base = models.load_model(steps.student_source(p))
    with torch.no_grad():
        gap = (deployed(input_ids=batch["input_ids"]).logits - base(input_ids=batch["input_ids"]).logits).abs().max()
    assert gap > 100 * m["tolerance"]


def test_a_saved_folder_that_loses_the_adapter_never_replaces_the_deployment(trained_adapter, monkeypatch):
    p, rows = trained_adapter
    first = Path(merge.merge_variant(p, "distilled", torch.device("cpu"), rows)["deploy_dir"])
    before = digest(first)
    real_load = models.load_model
    # a save that silently dropped the merged weights: loading it gives the untrained student
    monkeypatch.setattr(models, "load_model", lambda source, **kw: real_load(steps.student_source(p), **kw))
    with pytest.raises(RuntimeError, match="the saved model, loaded alone, differs"):
        merge.merge_variant(p, "distilled", torch.device("cpu"), rows)
    assert digest(first) == before
    assert [f.name for f in first.parent.iterdir() if f.name.startswith(".")] == []  # no half-written folder left
