"""Small Llama-style target/draft pairs made locally: random weights, a locally trained tokenizer.

The tests and the CPU demo need real checkpoints that SGLang and Hugging Face both load, without a
model hub. Every pair shares one tokenizer (SSD requires target and draft to share a vocabulary).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A speculative decoder drafts tokens and a target "
    "model verifies them. def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i)\n"
    "Once upon a time there was a small model that wanted to be fast. It guessed the next words "
    "while the large model checked its work. Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15. "
    "Question: what is 12 plus 30? Answer: 42. The weather today is sunny with a light breeze. "
)

TOKENIZER_VOCAB = 512
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def train_tokenizer(out_dir: Path, vocab_size: int = TOKENIZER_VOCAB) -> None:
    """Train a byte-level BPE tokenizer on a fixed corpus and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def _llama_config(vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )


def make_model(
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    seed: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    init_std: float = 0.2,
    base: Path | None = None,
    perturb: float = 0.0,
) -> Path:
    """Save a random Llama (or `base` with Gaussian noise of relative size `perturb`)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    if base is not None:
        model = LlamaForCausalLM.from_pretrained(str(base), torch_dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(torch.randn_like(p) * p.std() * perturb)
    else:
        cfg = _llama_config(len(tok), hidden, layers, heads, kv_heads)
        cfg.initializer_range = init_std
        model = LlamaForCausalLM(cfg).to(torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    return out_dir


def make_pair_set(root: Path) -> dict[str, Path]:
    """Target plus three drafts: itself, a perturbed copy, an unrelated random model."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(tok_dir)
    target = make_model(root / "target", tok_dir, seed=1, hidden=96, layers=3, heads=4, kv_heads=2)
    paths = {
        "target": target,
        "draft_same": target,
        "draft_perturbed": make_model(root / "draft_perturbed", tok_dir, seed=2, base=target, perturb=0.03),
        "draft_random": make_model(root / "draft_random", tok_dir, seed=3, hidden=48, layers=1, heads=2, kv_heads=1),
    }
    (root / "pairs.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
    return paths


def default_root() -> Path:
    return Path(os.environ.get("SGLANG_SSD_TINY_MODELS", Path.home() / ".cache" / "sglang_ssd" / "tiny_models"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=default_root())
    args = ap.parse_args()
    print(json.dumps({k: str(v) for k, v in make_pair_set(args.root).items()}, indent=1))
