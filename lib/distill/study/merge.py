"""Merging a trained adapter into its base student: the logits are checked before anything is saved or scored."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill.core import paths
from distill.core.params import StudyParams
from distill.parts import data, models
from distill.study import layout
from distill.study.layout import merged_dir, variant_dir
from distill.study.steps import load_student


def trained_variants(p: StudyParams) -> tuple[str, ...]:
    """The students a merge takes: both under the pipeline; run by hand, those 01_distill trained in this lab run."""
    if layout.lab_of(p) is None:
        return layout.VARIANTS
    found = tuple(v for v in layout.VARIANTS if (layout.variant_dir(p, v) / "best").is_dir())
    if not found:
        raise FileNotFoundError(f"{paths.shown(p.run_dir)}: no student trained by hand with these settings; run "
                                "01_distill by hand first, with the same parameters")
    return found


def merged_student(p: StudyParams, variant: str, device: torch.device, probe_rows) -> tuple[Any, Any, dict[str, Any]]:
    """(merged model, tokenizer, check): the variant's best adapter merged into its base student in memory.

    The merge is verified: merged and adapter models must give the same logits on a batch of `probe_rows`.
    A full student (no adapter) is loaded as it is.
    """
    from peft import PeftModel  # heavy (the model stack): loaded where a model is

    best = variant_dir(p, variant) / "best"
    if not best.is_dir():
        raise FileNotFoundError(f"{best}: no trained student for variant {variant}; run its training stage first "
                                f"(python -m distill run <params> --only train-{variant})")
    tokenizer = models.load_tokenizer(str(best))
    batch = data.pad_batch(data.encode_examples(probe_rows, tokenizer, p.max_length, p.seed).features,
                           tokenizer.pad_token_id)
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    real = batch["attention_mask"].bool()

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model(**batch, use_cache=False).logits

    if (best / "adapter_config.json").exists():
        base, _ = load_student(p, device)
        adapted = PeftModel.from_pretrained(base, str(best)).eval()
        before = logits(adapted)
        merged = adapted.merge_and_unload().eval()
        max_diff = float((before - logits(merged))[real].abs().max())
    else:  # a full student needs no merge
        merged, max_diff = models.load_model(str(best), dtype=p.model_dtype, device=device).eval(), 0.0
        before = logits(merged)
    tolerance = 1e-3 if p.model_dtype == "float32" else 5e-2
    if max_diff > tolerance:
        raise RuntimeError(f"merge changed the logits of {variant} by {max_diff:.2e} (> {tolerance:.0e})")
    check = {"variant": variant, "max_abs_logit_diff": max_diff, "tolerance": tolerance,
             "reference_logits": before, "logits": logits, "real": real}
    return merged, tokenizer, check


def merge_variant(p: StudyParams, variant: str, device: torch.device, probe_rows) -> dict[str, Any]:
    """Merge a trained adapter into its base student and save a standalone model atomically.

    Checked twice: the merged model in memory, then the saved folder loaded alone, must give the adapter's
    logits; an old deployment is replaced only after both checks pass.
    """
    out = merged_dir(p, variant)
    if p.deploy_dir and variant == "distilled":  # a folder the user named: replaced only if it is ours
        paths.check_replaceable(out)
    merged, tokenizer, check = merged_student(p, variant, device, probe_rows)
    before, logits, real, tolerance = check["reference_logits"], check["logits"], check["real"], check["tolerance"]
    reload_diff: list[float] = []

    def finish(tmp: Path) -> None:
        if getattr(merged, "generation_config", None) is not None:
            merged.generation_config.save_pretrained(tmp)
        # the saved folder is what gets deployed: it must give the adapter's logits when loaded alone
        # (a lost tie of embeddings or a dropped tensor shows here), before it replaces an old deployment
        reloaded = models.load_model(str(tmp), dtype=p.model_dtype, device=device).eval()
        reload_diff.append(float((before - logits(reloaded))[real].abs().max()))
        if reload_diff[0] > tolerance:
            raise RuntimeError(f"{variant}: the saved model, loaded alone, differs from the adapter model by "
                               f"{reload_diff[0]:.2e} (> {tolerance:.0e}); {out} was left as it was")
    marker = {"run_name": p.run_name, "variant": variant, "written_by": "distill-study merge"}
    models.atomic_save_pretrained(merged, tokenizer, out, extra=finish, marker=marker)
    return {"variant": variant, "deploy_dir": paths.shown(out), "max_abs_logit_diff": check["max_abs_logit_diff"],
            "reloaded_max_abs_logit_diff": reload_diff[0], "tolerance": tolerance,
            "size_mb": models.folder_size_mb(out)}
