"""`vsr train`, `vsr train export`, `vsr eval` and `vsr run` with the result, as a user runs them."""

from __future__ import annotations

import json

from helpers import one_line_error, run, write_training_photos
from vsr.media.image import read_image

REPO_EXAMPLE = "examples/train_psnr.toml"


def test_train_export_run_and_eval_from_the_cli(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    write_training_photos(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the example's relative data/ and runs/ paths start here
    sets = [
        "--set", "model.num_feat=8", "--set", "model.num_block=1", "--set", "model.num_grow_ch=4",
        "--set", "data.patch_size=32", "--set", "data.batch_size=2", "--set", "data.workers=0",
        "--set", "train.steps=4", "--set", "train.log_every=2", "--set", "checkpoint.every=2", "--set", "val.every=4",
    ]
    code, err = run(capsys, "train", "--config", repo / REPO_EXAMPLE, *sets, "--progress", "none")
    assert code == 0, err
    assert "trained to step 4" in err
    records = [json.loads(line) for line in (tmp_path / "runs" / "psnr" / "metrics.jsonl").read_text().splitlines()]
    assert records and max(r.get("step", 0) for r in records) == 4

    # Resuming a finished run with more steps continues from step 4.
    code, err = run(capsys, "train", "--config", repo / REPO_EXAMPLE, *sets, "--set", "train.steps=6", "--resume", "--progress", "none")
    assert code == 0, err
    assert "trained to step 6" in err

    code, err = run(capsys, "train", "export", "runs/psnr", "--output", "mine.safetensors")
    assert code == 0, err
    code, err = run(capsys, "run", "data/val/rocket.png", "out.png", "--model", "mine.safetensors")
    assert code == 0, err
    assert read_image(tmp_path / "out.png").shape == (256, 256, 3)

    from vsr.cli import main

    assert main(["eval", "data/val", "--model", "mine.safetensors", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scale"] == 4 and [r["name"] for r in result["images"]] == ["rocket.png"]
    assert {"psnr", "ssim", "bicubic_psnr"} <= result["mean"].keys() and 0 < result["mean"]["ssim"] <= 1


def test_train_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nnum_feet = 8\n")
    code, err = run(capsys, "train", "--config", bad)
    assert code == 78 and "num_feat" in one_line_error(err)
    code, err = run(capsys, "train", "--config", bad, "--set", "model=3")
    assert code == 78
    code, err = run(capsys, "train")
    assert code == 2 and "--config" in one_line_error(err)
