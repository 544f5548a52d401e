"""vsr as a render node gets it: the sdist and wheel hold every module, and the wheel, installed
(not editable) into a fresh virtual environment, runs every command from outside the checkout.

``python -m build`` makes the sdist and then the wheel from that sdist, so a file the wheel
build needs but the sdist leaves out fails here too. The install test takes a few minutes (a
fresh venv, torch, the wheel's dependencies from pip's cache); ``-m "not install"`` leaves it out
of a local run. CI runs it.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import av
import pytest

from helpers import package_folders, write_training_photos

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the README's pin: a CPU build here, no CUDA download
SAMPLE = REPO / "samples" / "sample.mp4"  # 96x64, 48 frames, AAC audio
FAST_MODEL = "realesr-animevideov3"


# --------------------------------------------------------------------------- what must ship


def shipped_files(folders: dict[str, Path] | None = None) -> dict[str, Path]:
    """Path inside the wheel -> source file, for every file under the package folders.

    Python modules and any other file (package data) alike; ``__pycache__`` and hidden files
    (editor and OS droppings) are not source.
    """
    out: dict[str, Path] = {}
    for package, folder in (folders or package_folders()).items():
        prefix = package.replace(".", "/")
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if not path.is_file() or path.suffix == ".pyc" or any(p == "__pycache__" or p.startswith(".") for p in rel.parts):
                continue
            out[f"{prefix}/{rel.as_posix()}"] = path
    return out


def compare(expected: Iterable[str], archive: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing from the archive, in the archive but not in the source tree), both sorted.

    ``archive`` holds the names of the package files only (no dist-info / egg-info).
    """
    expected, archive = set(expected), set(archive)
    return sorted(expected - archive), sorted(archive - expected)


def wheel_package_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return [n for n in zf.namelist() if not n.endswith("/") and ".dist-info/" not in n]


def sdist_files(sdist: Path) -> list[str]:
    """Member paths of the sdist, relative to its top folder (``vsr-0.1.0/``)."""
    with tarfile.open(sdist) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    return [n.split("/", 1)[1] for n in names if "/" in n]


# Fallback outside a git checkout: what .gitignore leaves out, at any depth / only at the top.
_NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.partial", ".pytest_cache")
_NOT_SOURCE_TOP = {"build", "dist", "out", "data", "runs"}


def clean_copy(dest: Path) -> Path:
    """The checkout as a clean clone has it (plus uncommitted files git does not ignore): no
    build/, no *.egg-info, no venv, nothing .git/info/exclude names.

    A stale ``vsr.egg-info/SOURCES.txt`` (left by an earlier build or ``pip install -e``) is read
    back by setuptools and would put files into the sdist that the config no longer names, hiding
    a package left out of pyproject.
    """
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        def ignore(folder: str, names: list[str]) -> set[str]:
            top = {n for n in names if n in _NOT_SOURCE_TOP or n.startswith(".")} if Path(folder) == REPO else set()
            return set(_NOT_SOURCE(folder, names)) | top

        shutil.copytree(REPO, dest, ignore=ignore)
        return dest
    for name in filter(None, listed):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel built from it, as ``python -m build`` makes them from a clean clone."""
    src = clean_copy(tmp_path_factory.mktemp("src") / "vsr")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels, sdists = list(out.glob("vsr-*.whl")), list(out.glob("vsr-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_holds_exactly_the_source_tree(dist):
    expected = shipped_files()
    assert "vsr/batch/run.py" in expected and "vsr/engines/trt_runtime.py" in expected and "vsr/kernels/yuv.py" in expected
    missing, extra = compare(expected, wheel_package_files(dist["wheel"]))
    assert not missing, f"left out of the wheel (add its package to [tool.setuptools] packages, or a package-data pattern, in pyproject.toml): {missing}"
    assert not extra, f"in the wheel but not in the source tree (a stale build?): {extra}"


def test_sdist_holds_what_the_wheel_build_needs(dist):
    names = set(sdist_files(dist["sdist"]))
    assert {"pyproject.toml", "README.md"} <= names
    source = {path.relative_to(REPO).as_posix() for path in shipped_files().values()}
    missing = sorted(source - names)
    assert not missing, f"left out of the sdist: {missing}"


def test_wheel_metadata_entry_point_and_extras(dist):
    with zipfile.ZipFile(dist["wheel"]) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(info).decode())
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "vsr = vsr.cli:entry" in entry_points
    requires = meta.get_all("Requires-Dist")
    assert set(meta.get_all("Provides-Extra")) >= {"onnx", "tensorrt", "cluster", "dali", "plot", "test"}
    # The TensorRT builder reads the ONNX file with the onnx package.
    assert any(r.startswith("onnx") and 'extra == "tensorrt"' in r for r in requires), requires
    assert any(r.startswith("tensorrt-cu13") and 'extra == "tensorrt"' in r for r in requires), requires


def test_compare_names_a_left_out_package(tmp_path):
    """The check above fails for a wheel without a package (what happened to vsr.batch)."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "ext").mkdir()
    for name in ("pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/b.py", "pkg/zoo.json", "ext/__init__.py", "ext/c.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"")
    (tmp_path / "pkg" / ".a.py.swp").write_bytes(b"")
    expected = shipped_files({"pkg": tmp_path / "pkg", "pkg.ext": tmp_path / "ext"})
    assert sorted(expected) == [
        "pkg/__init__.py", "pkg/a.py", "pkg/ext/__init__.py", "pkg/ext/c.py", "pkg/sub/__init__.py", "pkg/sub/b.py", "pkg/zoo.json",
    ]
    wheel = ["pkg/__init__.py", "pkg/a.py", "pkg/ext/__init__.py", "pkg/ext/c.py", "pkg/old.py"]
    assert compare(expected, wheel) == (["pkg/sub/__init__.py", "pkg/sub/b.py", "pkg/zoo.json"], ["pkg/old.py"])


# --------------------------------------------------------------------------- a render node


class Node:
    """A fresh venv with the wheel installed, and a clean environment to run it in."""

    def __init__(self, root: Path):
        self.root = root
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.work = root / "work"  # the cwd of every command: outside the checkout
        self.work.mkdir(parents=True)
        self.env = {
            "PATH": os.pathsep.join([str(self.bin), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": os.environ.get("HOME", str(root)),
            "VSR_HOME": str(root / "vsr_home"),  # a node's own model cache, converted on first use
            "LANG": "C.UTF-8",
        }

    def pip(self, *args: str) -> None:
        # pip's own settings (index, cache) come from the caller; nothing else does.
        env = {**self.env, **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
        proc = subprocess.run([str(self.bin / "python"), "-m", "pip", "install", "-q", *args], env=env, cwd=self.work,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def run(self, *argv: str | Path, code: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
        """``argv`` with the venv's executables, in the work folder; asserts the exit code."""
        cmd = [str(a) for a in argv]
        cmd[0] = str(self.bin / cmd[0])
        proc = subprocess.run(cmd, env=self.env, cwd=self.work, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == code, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def vsr(self, *argv: str | Path, code: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run("vsr", *argv, code=code, timeout=timeout)


@pytest.fixture(scope="session")
def node(dist, tmp_path_factory) -> Node:
    node = Node(tmp_path_factory.mktemp("render_node"))
    subprocess.run([sys.executable, "-m", "venv", str(node.venv)], check=True, timeout=300)
    node.pip(TORCH)  # first, so the wheel's torch requirement is already met by the CPU build
    node.pip(str(dist["wheel"]))
    return node


def video_facts(path: Path) -> tuple[int, int, int, list[str]]:
    """(frames, width, height, stream types) of a video file, decoded."""
    with av.open(str(path)) as container:
        kinds = [s.type for s in container.streams]
        stream = container.streams.video[0]
        frames = [f for f in container.decode(stream)]
    return len(frames), frames[0].width, frames[0].height, kinds


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vsr: error: "), proc.stderr
    return lines[0]


@pytest.mark.install
def test_the_installed_wheel_is_what_runs(node):
    """The venv imports vsr from its own site-packages, never from the checkout."""
    code = (
        "import json, sys, sysconfig, importlib\n"
        "mods = ['vsr', 'vsr.cli', 'vsr.batch.run', 'vsr.batch.ray_executor', 'vsr.engines.trt_runtime', 'vsr.kernels.yuv', 'vsr.train.loop']\n"
        "print(json.dumps({'site': sysconfig.get_paths()['purelib'], 'path': sys.path,"
        " 'files': {m: importlib.import_module(m).__file__ for m in mods}}))\n"
    )
    facts = json.loads(node.run("python", "-c", code).stdout)
    site = Path(facts["site"]).resolve()
    assert site.is_relative_to(node.venv.resolve())
    for module, file in facts["files"].items():
        assert Path(file).resolve().is_relative_to(site), (module, file)
    assert not any(Path(p).resolve().is_relative_to(REPO) for p in facts["path"] if p), facts["path"]
    # Only the base dependencies: the optional backends are really absent here.
    node.run("python", "-c", "import onnx", code=1)
    node.run("python", "-c", "import tensorrt", code=1)


@pytest.mark.install
def test_every_subcommand_has_help(node):
    listing = (
        "import argparse, json\n"
        "from vsr.cli import build_parser\n"
        "def walk(parser, prefix):\n"
        "    for action in parser._actions:\n"
        "        if isinstance(action, argparse._SubParsersAction):\n"
        "            for name, sub in action.choices.items():\n"
        "                yield prefix + [name]\n"
        "                yield from walk(sub, prefix + [name])\n"
        "print(json.dumps(list(walk(build_parser(), []))))\n"
    )
    commands = json.loads(node.run("python", "-c", listing).stdout)
    assert ["run"] in commands and ["batch"] in commands and ["train", "export"] in commands
    assert "usage: vsr" in node.vsr("--help").stdout
    for command in commands:
        out = node.vsr(*command, "--help").stdout
        assert out.startswith(f"usage: vsr {' '.join(command)}"), (command, out[:200])
    assert node.vsr("--version").stdout.strip() == "vsr 0.1.0"


@pytest.mark.install
def test_env_and_models(node):
    env = json.loads(node.vsr("env", "--json").stdout)
    assert str(node.venv) in env["Python"]
    assert env["torch"].startswith("2.13.0") and env["onnx"] == "not installed"
    models = node.vsr("models").stdout
    for name in ("realesrgan-x4plus", "realesrgan-x4plus-anime", FAST_MODEL):
        assert name in models


@pytest.mark.install
def test_run_and_batch_on_videos(node):
    node.vsr("run", SAMPLE, "out/sample_x4.mp4", "--model", FAST_MODEL, "--progress", "none")
    assert video_facts(node.work / "out" / "sample_x4.mp4") == (48, 384, 256, ["video", "audio"])

    clips = node.work / "clips"
    clips.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(SAMPLE, clips / name)
    # Two spawned workers: each re-imports vsr in a new process, from the wheel.
    node.vsr("batch", "clips", "--output-dir", "batch_out", "--model", FAST_MODEL, "--workers", "2", "--progress", "none")
    for name in ("a.mp4", "b.mp4"):
        assert video_facts(node.work / "batch_out" / name) == (48, 384, 256, ["video", "audio"])
    manifest = json.loads((node.work / "batch_out" / "vsr-batch.json").read_text())
    assert sorted(job["state"] for job in manifest["jobs"].values()) == ["done", "done"]


@pytest.mark.install
def test_train_export_eval_interp_and_run_the_result(node):
    data = node.work / "data"
    write_training_photos(data)
    (node.work / "tiny.toml").write_text(
        '[model]\narch = "rrdbnet"\nnum_feat = 8\nnum_block = 1\nnum_grow_ch = 4\nscale = 4\n\n'
        '[data]\ntrain = ["data/hr"]\nval = "data/val"\npatch_size = 32\nbatch_size = 2\nworkers = 0\n\n'
        '[train]\nstage = "psnr"\nsteps = 5\nlog_every = 1\ndevice = "cpu"\n\n'
        '[checkpoint]\ndir = "runs/tiny"\nevery = 5\nkeep = 1\n\n'
        "[val]\nevery = 5\n"
    )
    proc = node.vsr("train", "--config", "tiny.toml", "--progress", "none")
    assert "trained to step 5" in proc.stderr
    steps = [json.loads(line).get("step", 0) for line in (node.work / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 5
    node.vsr("train", "export", "runs/tiny", "--output", "tiny.safetensors")
    result = json.loads(node.vsr("eval", "data/val", "--model", "tiny.safetensors", "--json").stdout)
    assert result["scale"] == 4 and [r["name"] for r in result["images"]] == ["rocket.png"]
    node.vsr("interp", "tiny.safetensors", "tiny.safetensors", "--alpha", "0.5", "--output", "mix.safetensors")
    node.vsr("run", "data/val/rocket.png", "rocket_x4.png", "--model", "mix.safetensors")
    with av.open(str(node.work / "rocket_x4.png")) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (256, 256)


@pytest.mark.install
def test_missing_extras_are_exit_69_naming_the_extra(node):
    """Without the optional packages, the commands that need them say what to install."""
    line = one_error_line(node.vsr("export-onnx", "--model", FAST_MODEL, "--output", "m.onnx", code=69))
    assert 'pip install "vsr[onnx]"' in line
    # --min-shape is parsed by the TensorRT module's parse_shape: importing it needs neither tensorrt nor onnx.
    line = one_error_line(node.vsr(
        "build-engine", "--onnx", "m.onnx", "--min-shape", "1x3x16x16", "--opt-shape", "1x3x64x64", "--max-shape", "1x3x64x64", code=69,
    ))
    assert "pip install tensorrt-cu13" in line
    assert not (node.work / "m.onnx").exists()
