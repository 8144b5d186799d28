"""Tiny random Gemma-architecture models and a locally trained tokenizer, for smoke runs and tests.

Teacher and student differ in width and depth as gemma-7b and gemma-2b do, so the layer map and
the hidden-size projection are exercised. They are built once and cached under models/tiny/.
"""
from __future__ import annotations

from pathlib import Path

import torch

from distill.core import paths
from distill.core.paths import atomic_folder, hash_config
from distill.parts.data import load_squad

# head_dim is set explicitly: GemmaConfig keeps 256 whatever the hidden size.
TINY_CONFIGS = {
    "teacher": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16),
    "student": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=16),
}
TINY_VOCAB = 512
TOKENIZER_ROWS = 300  # SQuAD train rows the tokenizer learns from
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# Gemma's chat format, without a system role (Gemma has none either).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers, with a chat template."""
    from tokenizers import (  # heavy: only building a tiny model needs it
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # heavy (the model stack): loaded where a model is

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(name: str, vocab_size: int, seed: int = 0):
    from transformers import GemmaConfig, GemmaForCausalLM  # heavy (the model stack): loaded where a model is

    cfg = GemmaConfig(vocab_size=vocab_size, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1,
                      bos_token_id=2, **TINY_CONFIGS[name])
    torch.manual_seed(seed)
    return GemmaForCausalLM(cfg)


def _tokenizer_texts(squad_dir: str) -> list[str]:
    rows = load_squad("train", squad_dir, pool_rows=TOKENIZER_ROWS)
    texts = []
    for r in rows:
        texts += [r["context"], r["question"], *r["answers"]["text"]]
    texts += ["Context:", "Question:", "Answer:", "Answer the question with a short span copied from the context."]
    return texts


def ensure_tiny_model(name: str, squad_dir: str = "", seed: int = 0) -> Path:
    """The cached folder of tiny model `name` (tokenizer included), building it on first use.

    Its cache name covers what it is made from (config, seed and the tokenizer, itself named after the text it
    learnt), and building it leaves the caller's random state as it was: a run's numbers do not depend on whether
    the cache was warm.
    """
    if name not in TINY_CONFIGS:
        raise ValueError(f"tiny:{name}: unknown tiny model; known: {', '.join('tiny:' + n for n in TINY_CONFIGS)}")
    tok_dir = ensure_tiny_tokenizer(squad_dir)
    key = hash_config([TINY_CONFIGS[name], TINY_VOCAB, seed, tok_dir.name])
    out = paths.MODELS_DIR / "tiny" / f"{name}-{key}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoTokenizer  # heavy (the model stack): loaded where a model is

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    with torch.random.fork_rng():
        model = build_model(name, len(tokenizer), seed)

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_folder(build, out)


def ensure_tiny_tokenizer(squad_dir: str = "") -> Path:
    """The tokenizer learnt from the first TOKENIZER_ROWS training rows; named after those texts."""
    texts = _tokenizer_texts(squad_dir)
    out = paths.MODELS_DIR / "tiny" / f"tokenizer-{hash_config([TINY_VOCAB, CHAT_TEMPLATE, texts])}"
    if (out / "tokenizer.json").exists():
        return out
    tokenizer = build_tokenizer(texts)
    return atomic_folder(lambda tmp: tokenizer.save_pretrained(tmp), out)
