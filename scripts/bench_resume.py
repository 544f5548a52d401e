"""What ``vsr run``'s checkpoints cost and what they save: a table of wall times of the real command.

* one pass (``--checkpoint-frames 0``, no checkpoints) and checkpointed (``--checkpoint-frames N``,
  or with ``auto`` vsr's own sizes: 240 frames, then about a minute of compute a piece) on the same
  clip, uninterrupted: the overhead of the checkpoints, in total and per checkpoint (a piece's own
  seek, encoder start, pipeline drain and digest, plus the final join; the pieces are counted from
  the ``-v`` log);
* the same command killed with SIGKILL at 70 % (read from ``--progress json``) and run again:
  with resume (the rerun continues from the last finished piece) and without (``--no-resume``,
  what every run did before checkpoints): the time lost to the kill is the total minus the
  uninterrupted checkpointed run's time.

Every run is a fresh ``vsr run`` process (model load included, as a user pays it), on a clip made
by scripts/media.py. Example (the numbers in docs/BENCHMARKS.md)::

    python scripts/bench_resume.py --model realesr-animevideov3 --size 160x90 --frames 240 --checkpoint-frames 24
    python scripts/bench_resume.py --model realesr-animevideov3 --backend openvino --size 160x90 --frames 4800 --checkpoint-frames auto --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import media

# The -v line vsr logs for each finished checkpoint piece (vsr/resume.py).
PIECE_LINE = re.compile(r"checkpoint \d{4}\.\w+: \d+ frames in ")


def vsr(clip: Path, out: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vsr", "run", str(clip), str(out), "--model", args.model, "--device", args.device, "--backend", args.backend,
        "--overwrite", "--progress", "json", "-v", *extra,
    ]


def timed(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, checkpoint pieces the run wrote, from its ``-v`` log)."""
    started = time.perf_counter()
    done = subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - started, len(PIECE_LINE.findall(done.stderr))


def killed_at(cmd: list[str], share: float) -> float:
    """Seconds until the run reported ``share`` of its frames done and was SIGKILLed."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        record = json.loads(line)
        if record["event"] == "progress" and record["total"] and record["done"] >= share * record["total"]:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise SystemExit("the run ended before it could be killed; use a longer clip")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--size", default="160x90", help="clip WxH (default 160x90)")
    parser.add_argument("--frames", type=int, default=240, help="clip frames at 24 fps (default 240)")
    parser.add_argument("--checkpoint-frames", default="24", help="frames per checkpoint of the checkpointed runs, or auto: vsr's own sizes (default 24)")
    parser.add_argument("--kill-at", type=float, default=0.7, help="share of the frames done when the run is killed (default 0.7)")
    parser.add_argument("--repeat", type=int, default=3, help="uninterrupted runs of each kind, the fastest kept (default 3)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = media.make_clip(folder / "clip.mkv", size=(w, h), frames=args.frames, rate=Fraction(24), audio="aac",
                               photo=["astronaut", "rocket", "coffee"], options={"g": "48"})
        out = folder / "out" / "clip_x4.mkv"
        every = () if args.checkpoint_frames == "auto" else ("--checkpoint-frames", args.checkpoint_frames)
        timed(vsr(clip, out, args, "--checkpoint-frames", "0", "--frames", "8"))  # converts and caches the model once
        # Alternated and the fastest of each kept: on a shared machine, load comes and goes.
        times: dict[str, list[float]] = {"one": [], "checkpointed": []}
        for _ in range(args.repeat):
            times["one"].append(timed(vsr(clip, out, args, "--checkpoint-frames", "0"))[0])
            seconds, pieces = timed(vsr(clip, out, args, *every))
            times["checkpointed"].append(seconds)
        one_pass, checkpointed = min(times["one"]), min(times["checkpointed"])
        out.unlink()
        until_kill = killed_at(vsr(clip, out, args, *every), args.kill_at)
        rerun = timed(vsr(clip, out, args, *every))[0]
        out.unlink()
        until_kill_old = killed_at(vsr(clip, out, args, *every), args.kill_at)
        rerun_old = timed(vsr(clip, out, args, *every, "--no-resume"))[0]
    sizes = "vsr's own sizes" if args.checkpoint_frames == "auto" else f"every {args.checkpoint_frames} frames"
    rows = {
        f"one pass, uninterrupted (s, fastest of {args.repeat})": one_pass,
        f"checkpointed, {sizes}, uninterrupted (s, fastest of {args.repeat})": checkpointed,
        "checkpoint overhead, total (%)": 100 * (checkpointed - one_pass) / one_pass,
        f"checkpoint overhead per checkpoint (s, {pieces} pieces)": (checkpointed - one_pass) / pieces,
        f"killed at {args.kill_at:.0%}, then resumed: total (s)": until_kill + rerun,
        "  time lost to the kill, with resume (s)": until_kill + rerun - checkpointed,
        f"killed at {args.kill_at:.0%}, then --no-resume: total (s)": until_kill_old + rerun_old,
        "  time lost to the kill, without resume (s)": until_kill_old + rerun_old - checkpointed,
    }
    print(f"vsr run {args.model} --device {args.device} --backend {args.backend}, clip {args.size}, {args.frames} frames\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
