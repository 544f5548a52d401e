"""The compute stage's host <-> device copies: the stream/event plan as data, and Transfer executing it.

CPU: the plan's structure (which stream each step runs on, which event it waits for), a model of
CUDA stream semantics over it that shows consecutive batches overlapping (and the old single copy
stream serialising them), and Transfer's CPU path. CUDA (``needs_cuda``): the real overlap, measured
with a kernel that holds the compute stream, and the bytes that come back.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from vsr.transfer import COMPUTE, DOWNLOAD, ENCODE, UPLOAD, Step, StreamPlan, Transfer, stream_plan

# --------------------------------------------------------------------------- the plan as data


def test_cuda_plan_uses_three_streams_joined_only_by_events_of_the_same_batch():
    plan = stream_plan("cuda")
    assert plan.streams == (UPLOAD, COMPUTE, DOWNLOAD)
    assert [s.name for s in plan.steps] == [UPLOAD, COMPUTE, DOWNLOAD, ENCODE]
    up, comp, down, enc = plan.steps
    # Uploads and downloads never share a stream (the old Transfer used one copy stream for both).
    assert len({up.stream, comp.stream, down.stream}) == 3
    assert up.waits == () and comp.waits == ("uploaded",) and down.waits == ("computed",) and enc.waits == ("downloaded",)
    assert plan.recorder("uploaded") is up and plan.recorder("computed") is comp and plan.recorder("downloaded") is down
    assert enc.stream is None  # the encode thread is a host thread
    # The only event a host thread waits on puts it to sleep instead of spinning a core.
    assert [s.blocking for s in plan.steps] == [False, False, True, False]


def test_cpu_plan_has_no_streams():
    plan = stream_plan("cpu")
    assert plan.streams == ()
    assert all(s.stream is None and not s.waits and s.records is None for s in plan.steps)


def timeline(plan: StreamPlan, durations: dict[str, float], batches: int) -> dict[tuple[int, str], tuple[float, float]]:
    """(start, end) of each (batch, step) when the steps are issued batch after batch, as the
    compute thread does, under CUDA's rules: a stream runs its work in issue order, and a wait holds
    that stream until the event's work is done. Host steps form one more queue (the encode thread)."""
    free: dict[str | None, float] = {}
    done: dict[tuple[int, str], float] = {}
    spans = {}
    for batch in range(batches):
        for step in plan.steps:
            start = max([free.get(step.stream, 0.0)] + [done[(batch, event)] for event in step.waits])
            end = start + durations[step.name]
            free[step.stream] = end
            if step.records:
                done[(batch, step.records)] = end
            spans[(batch, step.name)] = (start, end)
    return spans


DURATIONS = {UPLOAD: 1.0, COMPUTE: 3.0, DOWNLOAD: 1.0, ENCODE: 0.5}


def test_consecutive_batches_overlap_under_the_plan():
    spans = timeline(stream_plan("cuda"), DURATIONS, batches=4)
    for n in range(3):
        # Upload N+1 runs during compute N; download N runs during compute N+1.
        assert spans[(n + 1, UPLOAD)][1] <= spans[(n, COMPUTE)][1]
        assert spans[(n, DOWNLOAD)][0] < spans[(n + 1, COMPUTE)][1] and spans[(n, DOWNLOAD)][1] <= spans[(n + 1, COMPUTE)][1]
        # The compute stream never idles between batches: it is the bound.
        assert spans[(n + 1, COMPUTE)][0] == spans[(n, COMPUTE)][1]
    assert spans[(3, DOWNLOAD)][1] == 1.0 + 4 * 3.0 + 1.0


def test_one_copy_stream_for_both_directions_serialises_the_batches():
    # The plan the old Transfer followed: the next upload queues behind a download that waits for compute.
    old = StreamPlan(
        ("copy", COMPUTE),
        (
            Step(UPLOAD, "copy", records="uploaded"),
            Step(COMPUTE, COMPUTE, waits=("uploaded",), records="computed"),
            Step(DOWNLOAD, "copy", waits=("computed",), records="downloaded", blocking=True),
            Step(ENCODE, None, waits=("downloaded",)),
        ),
    )
    spans = timeline(old, DURATIONS, batches=4)
    assert spans[(3, DOWNLOAD)][1] == 4 * (1.0 + 3.0 + 1.0)
    assert all(spans[(n + 1, UPLOAD)][0] >= spans[(n, DOWNLOAD)][1] for n in range(3))


def test_transfer_on_the_cpu_is_plain():
    t = Transfer(torch.device("cpu"))
    assert t.streams == {} and t.plan == stream_plan("cpu")
    host = torch.from_numpy(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with t.computing():
        dev = t.upload(host)
        assert dev.data_ptr() == host.data_ptr()  # zero-copy
        out, ready = t.download([dev * 2])
    assert ready is None and torch.equal(out[0], host * 2)
    assert t.events == {}


# --------------------------------------------------------------------------- CUDA


@functools.cache
def _cycles_per_ms() -> float:
    """Clock cycles of ``torch.cuda._sleep`` per millisecond on this GPU, measured with events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(50_000_000)
    end.record()
    end.synchronize()
    return 50_000_000 / start.elapsed_time(end)


def _busy(ms: float) -> None:
    """Hold the current stream for about ``ms`` milliseconds (a spin kernel)."""
    torch.cuda._sleep(int(ms * _cycles_per_ms()))


def _frames(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (4, 540, 960), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _upload_during_compute(t: Transfer, a: torch.Tensor, b: torch.Tensor):
    with t.computing():
        dev = t.upload(a)
        _busy(300)  # batch 1 holds the compute stream
        out, ready = t.download([dev + 1])
    computed = t.events["computed"]
    with t.computing():
        t.upload(b)
    t.events["uploaded"].synchronize()  # batch 2's upload is done ...
    overlapped = not computed.query()  # ... while batch 1 still computes?
    ready()
    return overlapped, out, computed


@pytest.mark.needs_cuda
def test_next_upload_does_not_wait_for_the_previous_batch():
    t = Transfer(torch.device("cuda", 0))
    assert len({s.cuda_stream for s in t.streams.values()}) == 3 and all(s.cuda_stream for s in t.streams.values())
    with t.computing():
        assert torch.cuda.current_stream().cuda_stream == t.streams[COMPUTE].cuda_stream
    a, b = _frames(1), _frames(2)
    # The first round allocates pinned and device memory (cudaHostAlloc/cudaMalloc can serialise
    # streams); the steady state reuses the caching allocators' blocks, as a video run does.
    _upload_during_compute(t, a, b)
    torch.cuda.synchronize()
    overlapped, out, computed = _upload_during_compute(t, a, b)
    assert overlapped
    assert computed.query() and t.events["downloaded"].query()
    assert torch.equal(out[0], a + 1)  # uint8 arithmetic wraps the same on both sides


def _download_during_compute(t: Transfer, a: torch.Tensor, b: torch.Tensor):
    with t.computing():
        out_a, ready_a = t.download([t.upload(a).flip(-1)])
    with t.computing():
        dev_b = t.upload(b)
        _busy(300)  # batch 2 holds the compute stream
        held = torch.cuda.Event()
        held.record()
        out_b, ready_b = t.download([dev_b])
    ready_a()
    overlapped = not held.query()  # batch 1 came back while batch 2 was still computing?
    ready_b()
    return overlapped, out_a, out_b


@pytest.mark.needs_cuda
def test_download_overlaps_the_next_batch_and_returns_the_right_bytes():
    t = Transfer(torch.device("cuda", 0))
    a, b = _frames(3), _frames(4)
    _download_during_compute(t, a, b)
    torch.cuda.synchronize()
    overlapped, out_a, out_b = _download_during_compute(t, a, b)
    assert overlapped
    assert torch.equal(out_a[0], a.flip(-1)) and torch.equal(out_b[0], b)
    assert out_a[0].is_pinned() and out_b[0].is_pinned()
