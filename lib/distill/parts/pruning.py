"""Depth pruning: a student cut from the teacher's layers, chosen by measured importance or an even stride."""
from __future__ import annotations

import copy
from typing import Iterable

import torch

from distill.parts.models import decoder_layers


# --------------------------------------------------------------------------------------------
def prune_layers(teacher, keep: list[int]):
    """A student built from the teacher's embeddings, final norm, head and the listed layers.

    The config is rebuilt for len(keep) layers (so layer_idx and the KV cache agree) and the
    embeddings are re-tied; generation with a cache works like on any model of that config.
    """
    layers = decoder_layers(teacher)
    n = len(layers)
    if not keep or sorted(set(keep)) != sorted(keep) or min(keep) < 0 or max(keep) >= n:
        raise ValueError(f"prune_layers: {keep} must be distinct indices in [0, {n})")
    keep = sorted(keep)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    from transformers import AutoModelForCausalLM  # heavy (the model stack): loaded where a model is

    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype)
    state = {}
    for k, v in teacher.state_dict().items():
        if ".layers." in k:
            prefix, rest = k.split(".layers.", 1)
            idx, tail = rest.split(".", 1)
            if int(idx) in keep:
                state[f"{prefix}.layers.{keep.index(int(idx))}.{tail}"] = v.clone()
        else:
            state[k] = v.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"pruning left weights unmatched: missing {missing}, unexpected {unexpected}")
    student.tie_weights()
    if config.tie_word_embeddings and (student.get_output_embeddings().weight.data_ptr()
                                       != student.get_input_embeddings().weight.data_ptr()):
        raise RuntimeError("pruned student's output embeddings are not tied to its input embeddings")
    student.config.pruned_from_layers = keep
    return student.to(next(teacher.parameters()).device)


@torch.no_grad()
def layer_importance(model, batches: Iterable[dict[str, torch.Tensor]]) -> list[float]:
    """Block influence per layer: 1 - cos(hidden in, hidden out), averaged over real tokens.

    A layer that barely turns the residual stream (ShortGPT's measure) is the cheapest to drop;
    one forward pass over the batches measures every layer.
    """
    model.eval()
    layers = decoder_layers(model)
    n = len(layers)
    total = torch.zeros(n, dtype=torch.float64)
    count = 0.0
    captured: dict[str, torch.Tensor] = {}
    # hidden_states[-1] is after the final norm: the last layer's own output is taken by a hook
    hook = layers[-1].register_forward_hook(
        lambda m, i, o: captured.__setitem__("last", o[0] if isinstance(o, tuple) else o))
    try:
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True, use_cache=False)
            hs = out.hidden_states  # hs[i] is the input of layer i, hs[i + 1] its output
            mask = batch["attention_mask"].bool()
            for i in range(n):
                after = hs[i + 1] if i + 1 < n else captured["last"]
                cos = torch.nn.functional.cosine_similarity(hs[i].float(), after.float(), dim=-1)
                total[i] += (1 - cos)[mask].sum().double()
            count += float(mask.sum())
    finally:
        hook.remove()
    return (total / max(count, 1.0)).tolist()


def full_attention_layers(config) -> list[int]:
    """The layers that attend to the whole sequence in a model that mixes them with sliding-window layers (Gemma 3:
    every sixth, 5, 11 and 17 of 18); empty when every layer has the same attention (Llama, SmolLM2)."""
    types = list(getattr(config.get_text_config(), "layer_types", None) or [])
    if len(set(types)) < 2:
        return []
    return [i for i, t in enumerate(types) if t == "full_attention"]


def choose_layers(n_layers: int, keep: int, method: str, importance: list[float] | None = None,
                  required: Iterable[int] = ()) -> list[int]:
    """Which teacher layers a pruned student keeps: an even stride, or the most important ones.

    By importance the first and last layers come first (they map tokens in and out), then the `required` ones
    (a mixed-attention model's full-attention layers), then the rest by measured importance.
    """
    if not 1 <= keep <= n_layers:
        raise ValueError(f"prune_keep: {keep} must be in [1, {n_layers}]")
    if method == "stride":
        return sorted({round(i * (n_layers - 1) / max(keep - 1, 1)) for i in range(keep)})
    if importance is None:
        raise ValueError("choose_layers by importance needs the measured importance")
    required = [i for i in dict.fromkeys(required) if 0 < i < n_layers - 1]
    middle = required + sorted((i for i in range(1, n_layers - 1) if i not in required), key=lambda i: -importance[i])
    ranked = [0, n_layers - 1, *middle] if n_layers > 1 else [0]
    return sorted(ranked[:keep])
