"""Decoding with NVIDIA DALI (``--decoder dali``), behind the same contract as
:func:`vsr.media.decode.iter_media`.

DALI decodes the pixels; PyAV still demuxes the file, because DALI's decoders return neither
timestamps nor the other streams:

* PyAV demuxes every packet once, in file order. Packets of the copied streams go out as
  :class:`~vsr.frame.CopiedPacket` right away; video packets only contribute their pts.
* DALI (``fn.experimental.inputs.video``, the streaming decoder) decodes the same file in
  presentation order, ``batch`` frames per pipeline run, fed from a read-only memory map of the
  file (``no_copy``: no second copy of a large file in memory).
* The k-th DALI frame takes the k-th smallest video pts. A pts becomes final as soon as a packet
  with a decode timestamp at or above it has been demuxed (every later packet has
  pts >= dts >= that), or, for containers without dts, once more than :data:`REORDER_WINDOW`
  packets wait. So frames leave interleaved with the copied packets, as with PyAV, in bounded memory,
  and variable frame rate survives: the timestamps are the container's, never derived from a rate.
* The frame counts must agree; a difference is an error, never a silently shifted timeline.

Pixels: DALI hands back 8-bit RGB only (its ``YCbCr`` option upsamples the chroma, and the CPU
reader fails with it), converted with the **BT.601 matrix whatever the stream declares**, in the
range the stream declares (checked on the CPU backend: the fitted matrix is 1.402/1.772 for
BT.709 and BT.2020 tagged clips alike; the GPU kernel in DALI's source uses BT.601 too). So a
frame keeps DALI's pixels as they are (no second 8-bit rounding) and :func:`frames_to_rgb`
re-matrixes them on the compute device: RGB_true = A_declared . A_601^-1 . RGB_dali, a 3x3 product
in which the range terms cancel. What DALI clipped to [0, 255] stays clipped.

Frame layout (``Frame.pix_fmt``):

* :data:`PIX_FMT_HOST` (``device="cpu"``): ``planes == [ndarray (H, W, 3) uint8]``, R, G, B.
* :data:`PIX_FMT_CUDA` (``device="gpu"``, NVDEC through DALI's ``mixed`` backend):
  ``planes == [torch.Tensor (H, W, 3) uint8 on cuda:device_id]``, complete when the frame is
  yielded: copied out of DALI's buffer (DLPack) into torch memory on a decode stream that has been
  synchronised. A consumer on another stream calls ``record_stream`` before use
  (:func:`frames_to_rgb` does).

Neither name is an FFmpeg pixel format, so :func:`vsr.color.layout` returns None for both and the
pipeline has to route them to :func:`frames_to_rgb` (see :data:`PIX_FMTS`).
"""

from __future__ import annotations

import functools
import heapq
import logging
import mmap
import os
from collections import deque
from collections.abc import Callable, Collection, Iterator
from fractions import Fraction

import av
import numpy as np

from .. import color
from ..errors import BackendUnavailable, InputError
from ..frame import CopiedPacket, Frame, VideoInfo

log = logging.getLogger(__name__)

#: Frames on the host: ``planes == [ndarray (H, W, 3) uint8]`` (R, G, B as DALI converted them).
PIX_FMT_HOST = "dali-rgb24"
#: Frames on the GPU: ``planes == [torch.Tensor (H, W, 3) uint8, CUDA]``.
PIX_FMT_CUDA = "dali-rgb24-cuda"
PIX_FMTS = (PIX_FMT_HOST, PIX_FMT_CUDA)

#: Codecs DALI 2.4 decodes per backend (the operator's docstring; the CPU list checked here).
CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}

#: Without decode timestamps, the smallest pending pts is final once more than this many video
#: packets wait (H.264 and HEVC reorder at most 16 frames).
REORDER_WINDOW = 32

_INSTALL = 'pip install "vsr[dali]"'


class DaliFrameCountMismatch(InputError):
    """DALI decoded a different number of frames than the container holds video packets (exit 65)."""


def available() -> bool:
    """Whether ``nvidia.dali`` imports (no GPU needed)."""
    try:
        _import_dali()
    except BackendUnavailable:
        return False
    return True


def require() -> None:
    """Raise :class:`BackendUnavailable` naming ``pip install "vsr[dali]"`` when DALI is missing
    (call it with :func:`check_input` before the output is created)."""
    _import_dali()


def _import_dali():
    try:
        import nvidia.dali as dali  # noqa: F401
        from nvidia.dali import fn, pipeline_def
    except ImportError as err:
        raise BackendUnavailable(
            f"--decoder dali needs NVIDIA DALI, which is not installed ({err}); run {_INSTALL}, "
            "or use --decoder pyav (default)"
        ) from err
    return fn, pipeline_def


def check_input(info: VideoInfo, device: str) -> None:
    """Raise :class:`BackendUnavailable` (one line) when DALI on ``device`` cannot decode ``info``'s
    video the way vsr needs it; say what to use instead."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    codec = info.codec
    if device == "cpu" and codec not in CPU_CODECS:
        raise BackendUnavailable(
            f"DALI's CPU decoder reads VP8, VP9 and MJPEG only; this file is {codec}: "
            "use --decoder pyav (default) or a GPU"
        )
    if device == "gpu" and codec not in GPU_CODECS:
        raise BackendUnavailable(
            f"DALI decodes H.264, HEVC, AV1, MPEG-4, VP8, VP9 and MJPEG; this file is {codec}: use --decoder pyav (default)"
        )
    videos = [s for s in info.streams if s.kind == "video"]
    if len(videos) > 1:
        # DALI picks "the best" video stream itself (no stream index in its API); vsr's is the first.
        held = ", ".join(s.describe() for s in videos)
        raise BackendUnavailable(
            f"DALI chooses the video stream itself and this file has {len(videos)} ({held}): use --decoder pyav (default)"
        )
    lay = color.layout(info.pix_fmt)
    if lay is None or lay.family != "yuv" or lay.bits != 8:
        depth = f"{lay.bits}-bit " if lay is not None else ""
        raise BackendUnavailable(
            f"DALI hands back 8-bit RGB converted from 8-bit Y'CbCr; this file is {depth}{info.pix_fmt}, "
            "which would lose bits or colours: use --decoder pyav (default)"
        )
    if device == "gpu" and lay.chroma != (2, 2):
        raise BackendUnavailable(
            f"DALI's NVDEC path converts 4:2:0 video only; this file is {info.pix_fmt}: use --decoder pyav (default)"
        )


def iter_media_dali(
    container: av.container.InputContainer,
    info: VideoInfo,
    *,
    copy_streams: Collection[int],
    device: str = "cpu",
    batch: int = 8,
    device_id: int | None = None,
) -> Iterator[Frame | CopiedPacket]:
    """Like :func:`vsr.media.decode.iter_media`, with DALI decoding the video stream.

    ``device="cpu"`` decodes with DALI's CPU backend (VP8, VP9, MJPEG) into :data:`PIX_FMT_HOST`
    frames; ``device="gpu"`` with NVDEC (DALI ``device="mixed"``) on ``cuda:device_id`` (default:
    torch's current device) into :data:`PIX_FMT_CUDA` frames. ``batch`` frames are decoded per
    DALI run. ``container`` and ``info`` come from :func:`vsr.media.decode.open_input` on the same
    file; PyAV demuxes it for the timestamps and the copied streams.

    Raises :class:`BackendUnavailable` when DALI or the GPU is missing or cannot decode the file
    (codec, depth and layout are checked at the first ``next()``, before anything is read; call
    :func:`check_input` and :func:`require` earlier to fail before the output exists), and
    :class:`DaliFrameCountMismatch` (exit 65) when DALI's frames and the container's packets
    disagree.
    """
    check_input(info, device)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    fn, pipeline_def = _import_dali()
    if device == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("--decoder dali on the GPU needs an NVIDIA GPU and driver; none found, use --decoder pyav (default)")
        if device_id is None:
            device_id = torch.cuda.current_device()

    video = container.streams[info.stream_index]
    copied = [container.streams[i] for i in copy_streams if container.streams[i].type != "attachment"]
    time_base = Fraction(video.time_base) if video.time_base else info.time_base
    frames = _DaliFrames(fn, pipeline_def, info, device=device, batch=batch, device_id=device_id)
    log.info(
        "decoding %s with DALI %s (%s), %d frames per run; timestamps and copied streams from PyAV",
        info.path, "NVDEC" if device == "gpu" else "CPU", info.codec, batch,
    )
    order = PtsOrder()
    count = 0
    try:

        def emit(pts: int) -> Frame:
            nonlocal count
            count += 1
            return Frame(
                index=count - 1, planes=[frames.take(order.packets)], pix_fmt=frames.pix_fmt, pts=pts,
                time_base=time_base, width=info.width, height=info.height, colour=info.colour,
            )

        for packet in container.demux([video, *copied]):
            if packet.stream.index != info.stream_index:
                if packet.size:  # empty packets are demuxer flush markers, not data
                    yield CopiedPacket(packet, packet.stream.index)
                continue
            if not packet.size:
                continue
            if packet.pts is None and packet.dts is None:
                raise BackendUnavailable(
                    f"input {info.path}: video packets without timestamps; DALI frames cannot be timed, use --decoder pyav"
                )
            for pts in order.push(packet.pts, packet.dts, where=info.path):
                yield emit(pts)
        for pts in order.flush(where=info.path):
            yield emit(pts)
        if order.packets == 0:
            raise InputError(f"input {info.path}: the video stream holds no packets")
        frames.finish(order.packets)
    finally:
        frames.close()


class PtsOrder:
    """Video packet timestamps in decode order -> the same timestamps in presentation order,
    each released as soon as no later packet can present before it.

    ``push(pts, dts)`` per video packet returns the pts that became final; ``flush()`` the rest at
    the end. Every later packet has pts >= its dts >= the current dts, so pending pts up to the
    current dts are final. Without dts (some Matroska/raw streams) the smallest of more than
    :data:`REORDER_WINDOW` pending pts is released. A packet without pts counts with its dts,
    as FFmpeg's decoders and DALI's index do.
    """

    def __init__(self, window: int = REORDER_WINDOW):
        self.window = window
        self.packets = 0
        self.emitted = 0
        self._pending: list[int] = []
        self._last: int | None = None

    def push(self, pts: int | None, dts: int | None, *, where: object = "input") -> list[int]:
        ts = pts if pts is not None else dts
        if ts is None:
            raise ValueError("a packet needs a pts or a dts")
        heapq.heappush(self._pending, ts)
        self.packets += 1
        out = []
        while self._pending and ((dts is not None and self._pending[0] <= dts) or len(self._pending) > self.window):
            out.append(self._pop(where))
        return out

    def flush(self, *, where: object = "input") -> list[int]:
        return [self._pop(where) for _ in range(len(self._pending))]

    def _pop(self, where: object) -> int:
        pts = heapq.heappop(self._pending)
        if self._last is not None and pts < self._last:
            raise InputError(
                f"input {where}: video frames reorder deeper than {self.window} packets and the packets carry no "
                "decode timestamps; use --decoder pyav"
            )
        self._last = pts
        self.emitted += 1
        return pts


class _DaliFrames:
    """DALI's streaming decoder over one file, frame by frame, in presentation order."""

    def __init__(self, fn, pipeline_def, info: VideoInfo, *, device: str, batch: int, device_id: int | None):
        self.info = info
        self.batch = batch
        self.gpu = device == "gpu"
        self.device_id = device_id
        self._stream = None  # the CUDA stream the GPU frames are copied on (created on first use)
        self.pix_fmt = PIX_FMT_CUDA if self.gpu else PIX_FMT_HOST
        # Read-only map of the file: DALI reads it in place (no_copy), the OS pages it in and out.
        with open(info.path, "rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._data = np.frombuffer(self._map, dtype=np.uint8)
        threads = max(1, min(4, (os.cpu_count() or 2) // 2))

        @pipeline_def(
            batch_size=1, num_threads=threads, device_id=device_id if self.gpu else None,
            # One run in flight: a prefetched run past the end of the file is an error in DALI.
            prefetch_queue_depth=1,
            # The dynamic executor: outputs stay valid after the next run (refcounted, DLPack).
            exec_dynamic=True,
        )
        def decode():
            kwargs = {"affine": False} if self.gpu else {}  # do not pin DALI's threads to cores
            return fn.experimental.inputs.video(
                name="video", sequence_length=batch, device="mixed" if self.gpu else "cpu",
                last_sequence_policy="partial", no_copy=True, **kwargs,
            )

        self._pipe = decode()
        try:
            self._pipe.build()
            self._pipe.feed_input("video", [self._data])
        except RuntimeError as err:
            raise BackendUnavailable(f"DALI could not open {info.path} ({_dali_reason(err)}); use --decoder pyav (default)") from err
        self._queue: deque = deque()  # frames of the last run not handed out yet
        self._decoded = 0
        self._exhausted = False

    def take(self, packets_seen: int):
        """The next frame in presentation order (``packets_seen``: for the error message)."""
        if not self._queue:
            self._run(packets_seen)
        return self._queue.popleft()

    def _run(self, packets_seen: int) -> None:
        if self._exhausted:
            raise self._mismatch(f"DALI decoded {self._decoded} frames, the container holds at least {packets_seen} video packets")
        try:
            (out,) = self._pipe.run()
        except RuntimeError as err:
            if "No data was provided" in str(err):
                raise self._mismatch(
                    f"DALI decoded {self._decoded} frames, the container holds at least {packets_seen} video packets"
                ) from err
            raise BackendUnavailable(
                f"DALI failed to decode {self.info.path} after {self._decoded} frames ({_dali_reason(err)}); use --decoder pyav (default)"
            ) from err
        seq = self._sequence(out)
        count = int(seq.shape[0])
        if count == 0:
            raise self._mismatch(f"DALI decoded {self._decoded} frames, the container holds at least {packets_seen} video packets")
        height, width = int(seq.shape[1]), int(seq.shape[2])
        if (width, height) != (self.info.width, self.info.height):
            raise InputError(
                f"input {self.info.path}: DALI decoded {width}x{height} frames, the stream declares "
                f"{self.info.width}x{self.info.height}; use --decoder pyav"
            )
        self._queue.extend(seq[i] for i in range(count))
        self._decoded += count
        # A short sequence is DALI's last (last_sequence_policy="partial").
        self._exhausted = count < self.batch

    def _sequence(self, out):
        """One run's output (a batch of one (F, H, W, 3) sequence) as numpy or a CUDA tensor."""
        tensor = out.as_tensor()
        if self.gpu:
            import torch

            # run() without a stream is host-synchronous, so DALI's pixels are complete here. They are
            # copied into torch's allocator on a stream of our own, and the copy is waited for, so
            # that (a) DALI may recycle its buffer as soon as the reference drops and (b) the frames
            # can be read on any stream (the consumer marks them with record_stream: frames_to_rgb).
            if self._stream is None:
                self._stream = torch.cuda.Stream(torch.device("cuda", self.device_id))
            with torch.cuda.stream(self._stream):
                seq = torch.from_dlpack(tensor).clone()
            self._stream.synchronize()
        else:
            seq = np.from_dlpack(tensor).copy()  # a copy: no reliance on how long DALI keeps its buffer
        if seq.ndim != 5 or seq.shape[0] != 1 or seq.shape[-1] != 3:
            raise BackendUnavailable(f"DALI returned video of shape {tuple(seq.shape)}, expected (1, F, H, W, 3); use --decoder pyav")
        return seq[0]

    def finish(self, packets: int) -> None:
        """After the last frame: DALI must not hold more frames than the container's packets."""
        if self._queue:
            raise self._mismatch(f"DALI decoded {self._decoded} frames, the container holds {packets} video packets")

    def _mismatch(self, what: str) -> DaliFrameCountMismatch:
        return DaliFrameCountMismatch(
            f"input {self.info.path}: {what}, so frames and timestamps cannot be paired "
            "(negative or missing timestamps, hidden frames or a damaged file); use --decoder pyav (default)"
        )

    def close(self) -> None:
        self._queue.clear()
        self._pipe = None  # DALI releases its decoder and threads with the pipeline
        self._data = None
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere: the garbage collector unmaps it
            pass


def _dali_reason(err: BaseException) -> str:
    """The informative line of a DALI error (they span many lines with a pipeline traceback)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("encountered:") and i + 1 < len(lines):
            return lines[i + 1][:200]
    for line in lines:
        if "Critical error" not in line and not line.startswith(("File ", "Error in")):
            return line[:200]
    return (lines[0] if lines else type(err).__name__)[:200]


# --------------------------------------------------------------------------- to RGB on the device


def _ycbcr_to_rgb(kr: float, kb: float) -> np.ndarray:
    """3x3 matrix from normalised (Y', Cb', Cr') to R'G'B' (non-constant luminance)."""
    kg = 1.0 - kr - kb
    return np.array([
        [1.0, 0.0, 2.0 * (1.0 - kr)],
        [1.0, -2.0 * kb * (1.0 - kb) / kg, -2.0 * kr * (1.0 - kr) / kg],
        [1.0, 2.0 * (1.0 - kb), 0.0],
    ])


def rematrix(matrix: str) -> np.ndarray | None:
    """The 3x3 matrix taking DALI's RGB (decoded with BT.601) to the RGB of ``matrix`` (a key of
    :data:`vsr.color.MATRICES`), or None when it is BT.601 already. Range terms cancel: DALI
    applies the stream's range, as vsr does."""
    if matrix == "bt601":
        return None
    return _ycbcr_to_rgb(*color.MATRICES[matrix]) @ np.linalg.inv(_ycbcr_to_rgb(*color.MATRICES["bt601"]))


def frames_to_rgb(frames: list[Frame], device, upload: Callable | None = None):
    """DALI frames (one pixel format and colour) -> float32 RGB ``(N, 3, H, W)`` on ``device``,
    with the matrix the frames declare, not clamped (like :func:`vsr.kernels.yuv.yuv_to_rgb`).

    ``upload(host_tensor) -> device_tensor`` moves host frames (the pipeline's
    ``Transfer.upload``: pinned memory, copy stream); CUDA frames are used where they are.
    """
    import torch

    device = torch.device(device)
    first = frames[0]
    if first.pix_fmt == PIX_FMT_CUDA:
        planes = [f.planes[0] for f in frames]
        if device.type == "cuda":
            stream = torch.cuda.current_stream(device)
            for p in planes:
                if p.device == device:
                    p.record_stream(stream)  # made on the decode thread's stream, read on this one
        codes = torch.stack(planes).to(device)
    elif first.pix_fmt == PIX_FMT_HOST:
        host = torch.from_numpy(np.stack([f.planes[0] for f in frames]))
        codes = upload(host) if upload is not None else host.to(device)
    else:
        raise ValueError(f"not a DALI frame: pix_fmt {first.pix_fmt}")
    rgb = codes.permute(0, 3, 1, 2).to(torch.float32).mul_(1.0 / 255.0)
    weights = rematrix_on(first.colour.matrix, device)
    if weights is None:
        return rgb.contiguous()
    return torch.einsum("ij,njhw->nihw", weights, rgb).contiguous()


@functools.lru_cache(maxsize=16)
def rematrix_on(matrix: str, device):
    """:func:`rematrix` as a float32 tensor resident on ``device``, uploaded once (from pinned
    memory) per matrix and device instead of once per batch; None for BT.601."""
    import torch

    from ..device import to_device_once

    m = rematrix(matrix)
    return None if m is None else to_device_once(torch.as_tensor(m, dtype=torch.float32), torch.device(device))
