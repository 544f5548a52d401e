"""``vsr env`` and ``vsr models``."""

from __future__ import annotations

import json

import torch

from vsr.cli import main
from vsr.models import zoo


def test_env_reports_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out and "PyAV" in out and "FFmpeg libavcodec" in out
    for component in ("onnxruntime", "tensorrt", "dali", "ray", "cache"):
        assert component in out
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["GPUs"] if torch.cuda.is_available() else info["GPUs"] == "none visible to torch"
    assert all(isinstance(v, str) for v in info.values())


def test_models_lists_names_arch_scale_and_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VSR_HOME", str(tmp_path))
    zoo.ensure_converted("realesr-animevideov3")
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(rows) == {"realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"}
    assert rows["realesr-animevideov3"]["status"] == "cached"
    assert rows["realesrgan-x4plus"]["status"] == "not cached" and rows["realesrgan-x4plus"]["default"]
    assert rows["realesrgan-x4plus-anime"]["arch"] == "RRDBNet" and rows["realesrgan-x4plus-anime"]["scale"] == 4
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "realesrgan-x4plus " in text and "(default)" in text and str(tmp_path) in text
