"""Training data: HR pictures (image folders, paired HR/LR folders, frames sampled from videos),
random aligned crops with flips and 90-degree rotations, LR made by a degradation, and a
DataLoader whose batches depend only on (seed, step), never on the number of worker processes.

How determinism works: sample ``i`` (a global counter, ``step * batch + b`` on one process) picks
its source picture from a per-epoch permutation seeded by ``(seed, epoch)`` and draws its crop,
flips and degradation from ``numpy.random.default_rng((seed, i))``. So a batch is a pure function of
the seed and the step: two runs agree whatever ``workers`` is, and resuming at step ``k`` only needs
``k`` (the sampler starts at sample ``k * batch``). Worker processes are additionally seeded from
(seed, worker id, start step) for any library code that uses the global generators.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import DataConfig, DegradationConfig
from ..errors import InputError, InputMissing
from ..media.image import IMAGE_FORMATS, read_image
from ..runtime import apply_threads
from .degrade import make_degradation

log = logging.getLogger(__name__)

# Salts keep the generators of different purposes apart for the same seed.
_SALT_PERM = 0x5EED_0001
_SALT_SAMPLE = 0x5EED_0002
_SALT_WORKER = 0x5EED_0003
MAX_LISTED = 5  # names shown in an error listing mismatches


# --------------------------------------------------------------------------- listing files


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_FORMATS


def list_images(folder: str | Path, *, what: str = "folder") -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputMissing(f"{what} {folder} does not exist; check the path (relative paths start from the current directory)")
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is not a folder")
    return sorted((p for p in folder.rglob("*") if p.is_file() and is_image(p)), key=lambda p: p.relative_to(folder).as_posix())


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the picture."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} holds no picture")
            cc = container.streams.video[0].codec_context
            if cc.width and cc.height:
                return cc.width, cc.height
    except av.FFmpegError as err:
        raise InputError(f"{path} is not a readable image ({err}); remove or replace it") from err
    h, w = read_image(path).shape[:2]
    return w, h


def _key(folder: Path, path: Path) -> str:
    """Pairing key: the path below the folder without its extension (a.png pairs with a.jpg)."""
    return path.relative_to(folder).with_suffix("").as_posix()


def pair_folders(hr_dir: str | Path, lr_dir: str | Path, scale: int, *, what: str = "data") -> list[tuple[Path, Path]]:
    """Match HR and LR files by name and check HR size == LR size * scale; mismatches are one InputError."""
    hr_dir, lr_dir = Path(hr_dir).expanduser(), Path(lr_dir).expanduser()
    hr = list_images(hr_dir, what=f"{what} HR folder")
    lr = {_key(lr_dir, p): p for p in list_images(lr_dir, what=f"{what} LR folder")}
    if not hr:
        raise InputError(f"{what} HR folder {hr_dir} holds no images ({', '.join(sorted(set(IMAGE_FORMATS.values())))})")
    missing = [p for p in hr if _key(hr_dir, p) not in lr]
    if missing:
        names = ", ".join(p.relative_to(hr_dir).as_posix() for p in missing[:MAX_LISTED])
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise InputError(
            f"{len(missing)} of {len(hr)} HR images in {hr_dir} have no LR partner in {lr_dir} ({names}{more});"
            " LR files must have the same names (any image extension)"
        )
    pairs = [(p, lr[_key(hr_dir, p)]) for p in hr]
    wrong = []
    for h, l in pairs:
        (hw, hh), (lw, lh) = image_size(h), image_size(l)
        if (hw, hh) != (lw * scale, lh * scale):
            wrong.append(f"{h.relative_to(hr_dir).as_posix()} {hw}x{hh} vs LR {lw}x{lh}")
    if wrong:
        more = f" and {len(wrong) - MAX_LISTED} more" if len(wrong) > MAX_LISTED else ""
        raise InputError(
            f"{len(wrong)} HR/LR pairs in {hr_dir} and {lr_dir} are not exactly x{scale} apart ({'; '.join(wrong[:MAX_LISTED])}{more});"
            " crop the HR pictures to LR size * scale"
        )
    return pairs


# --------------------------------------------------------------------------- pixels


def to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` uint8/uint16 (gray, gray+alpha, RGB, RGBA) -> ``(H, W, 3)`` float32 in [0, 1]."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2]
    colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    peak = 65535.0 if pixels.dtype == np.uint16 else 255.0 if pixels.dtype == np.uint8 else 1.0
    return np.ascontiguousarray(colour, dtype=np.float32) / np.float32(peak)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` float32 RGB in [0, 1] (alpha dropped, gray replicated)."""
    return to_float_rgb(read_image(path))


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float -> ``(3, H, W)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))


def video_frame_count(path: str | Path) -> int:
    """Frames in a video, counted from its packets (headers may lie)."""
    from ..media.decode import open_input

    container, info = open_input(Path(path).expanduser(), probe_frame=False)  # header facts only
    try:
        stream = container.streams[info.stream_index]
        return sum(1 for packet in container.demux(stream) if packet.size)
    finally:
        container.close()


def sample_video_frames(path: str | Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly across a video (the middle of ``count`` equal spans), as
    ``(H, W, 3)`` uint8 RGB (uint16 for sources deeper than 8 bits), converted with the matrix and
    range the stream declares."""
    total = video_frame_count(path)
    if total == 0:
        raise InputError(f"video {path} has no video frames to train on")
    return video_frames_at(path, spread_indices(total, count))


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames (the middle of ``count`` equal
    spans; all of them when there are fewer)."""
    n = min(count, total)
    return sorted({min(total - 1, int((k + 0.5) * total / n)) for k in range(n)})


def video_frames_at(path: str | Path, wanted: list[int]) -> list[np.ndarray]:
    """The frames of a video at the indices ``wanted`` (sorted), decoded as ``vsr run`` decodes
    them; the file is decoded once, up to the last frame needed."""
    from ..color import layout
    from ..media.decode import iter_media, open_input
    from ..planes import planes_to_rgb

    path = Path(path).expanduser()
    wanted_set = set(wanted)
    frames: list[np.ndarray] = []
    container, info = open_input(path, probe_frame=False)  # training frames need no display matrix or HDR tags
    try:
        device = torch.device("cpu")
        for item in iter_media(container, info, copy_streams=()):
            if item.index in wanted_set:
                bits = layout(item.pix_fmt).bits if layout(item.pix_fmt) else 8
                rgb = planes_to_rgb([item], device)[0].clamp(0, 1).permute(1, 2, 0).numpy()
                peak, dtype = (255, np.uint8) if bits <= 8 else (65535, np.uint16)
                frames.append(np.round(rgb * peak).astype(dtype))
                if len(frames) == len(wanted_set):
                    break
    finally:
        container.close()
    if len(frames) < len(wanted_set):
        log.warning("video %s: %d of the %d wanted frames could be decoded", path, len(frames), len(wanted_set))
    return frames


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One HR training picture: an image file (with an optional LR partner) or a decoded video frame."""

    name: str
    path: Path
    lr_path: Path | None = None
    frame: int | None = None  # index into TrainSet.frames


def collect_sources(data: DataConfig, scale: int) -> tuple[list[Source], list[np.ndarray]]:
    """Resolve ``data.train`` (and ``data.train_lr``) into sources; video frames are decoded here.

    An entry is an image, a video file, or a folder: every image in it (recursively) and
    ``data.frames_per_video`` frames of every video in it; other files there (subtitles, notes)
    are skipped with a log line."""
    if not data.train:
        from ..errors import ConfigError

        raise ConfigError("data.train is empty; list HR image folders and/or video files, e.g. train = [\"data/hr\"]")
    sources: list[Source] = []
    frames: list[np.ndarray] = []

    def add_video(path: Path) -> None:
        before = len(sources)
        for k, pixels in enumerate(sample_video_frames(path, data.frames_per_video)):
            sources.append(Source(f"{path.as_posix()}#{k}", path, frame=len(frames)))
            frames.append(pixels)
        log.info("video %s: %d frames sampled for training", path, len(sources) - before)

    for entry in data.train:
        path = Path(entry).expanduser()
        if not path.exists():
            raise InputMissing(f"data.train entry {entry} does not exist; check the path (relative paths start from the current directory)")
        if path.is_dir():
            if data.train_lr:
                for hr, lr in pair_folders(path, data.train_lr, scale, what="data.train"):
                    sources.append(Source(hr.as_posix(), hr, lr))
                continue
            files = sorted((p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")),
                           key=lambda p: p.relative_to(path).as_posix())
            found = len(sources)
            for file in files:
                if is_image(file):
                    sources.append(Source(file.as_posix(), file))
                    continue
                try:
                    add_video(file)
                except InputError as err:  # a subtitle file, a text note: not training material
                    log.warning("data.train folder %s: skipping %s (%s)", path, file.name, err)
            if len(sources) == found:
                raise InputError(f"data.train folder {path} holds no images ({', '.join(sorted(IMAGE_FORMATS))}) and no videos")
        elif is_image(path):
            if data.train_lr:
                raise InputError(f"data.train entry {path} is a single image; with data.train_lr, list HR folders")
            sources.append(Source(path.as_posix(), path))
        else:
            if data.train_lr:
                raise InputError(f"data.train entry {path} is a video; data.train_lr pairs folders only, remove it or train_lr")
            add_video(path)
    return sources, frames


# --------------------------------------------------------------------------- dataset


def augment(arrays: Sequence[np.ndarray], rng: np.random.Generator, *, flip: bool, rot90: bool) -> list[np.ndarray]:
    """The same random horizontal flip, vertical flip and transpose (with the flips: all 8
    orientations) applied to every ``(H, W, C)`` array."""
    hflip = flip and rng.uniform() < 0.5
    vflip = flip and rng.uniform() < 0.5
    transpose = rot90 and rng.uniform() < 0.5
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if transpose:
            a = a.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(a))
    return out


class TrainSet(Dataset):
    """Map-style dataset indexed by the global sample counter (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[Source],
        frames: Sequence[np.ndarray],
        *,
        scale: int,
        patch_size: int,
        seed: int,
        degradation: str = "bicubic",
        degradation_params: DegradationConfig | None = None,
        flip: bool = True,
        rot90: bool = True,
    ):
        if not sources:
            raise InputError("no training pictures found")
        self.sources = list(sources)
        self.frames = list(frames)
        self.scale = scale
        self.patch = patch_size
        self.seed = seed
        self.flip = flip
        self.rot90 = rot90
        self.degrade = make_degradation(degradation, scale, degradation_params)
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def source_for(self, index: int) -> Source:
        """The picture sample ``index`` uses: epoch ``index // len`` is a fresh seeded permutation."""
        epoch, pos = divmod(index, len(self.sources))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, _SALT_PERM]).permutation(len(self.sources))
            self._perm_epoch = epoch
        return self.sources[int(self._perm[pos])]

    def _load(self, src: Source) -> np.ndarray:
        if src.frame is not None:
            return self.frames[src.frame]
        return read_image(src.path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = self.source_for(index)
        rng = np.random.default_rng([self.seed, index, _SALT_SAMPLE])
        hr = self._load(src)
        s, p = self.scale, self.patch
        h, w = hr.shape[:2]
        if src.lr_path is not None:
            lr = read_image(src.lr_path)
            lp = p // s
            if lr.shape[0] < lp or lr.shape[1] < lp:
                raise InputError(f"LR image {src.lr_path} ({lr.shape[1]}x{lr.shape[0]}) is smaller than the LR patch {lp}x{lp}; lower data.patch_size")
            top = int(rng.integers(0, lr.shape[0] - lp + 1))
            left = int(rng.integers(0, lr.shape[1] - lp + 1))
            hr_crop = hr[top * s : (top + lp) * s, left * s : (left + lp) * s]
            lr_crop = lr[top : top + lp, left : left + lp]
            hr_crop, lr_crop = augment([hr_crop, lr_crop], rng, flip=self.flip, rot90=self.rot90)
            return to_tensor(to_float_rgb(lr_crop)), to_tensor(to_float_rgb(hr_crop))
        if h < p or w < p:
            # Too small for a patch: pad by reflection (edge replication for really tiny ones).
            mode = "reflect" if h > 1 and w > 1 and p - h < h and p - w < w else "edge"
            hr = np.pad(hr, ((0, max(0, p - h)), (0, max(0, p - w)), (0, 0)), mode=mode)
            h, w = hr.shape[:2]
        top = int(rng.integers(0, h - p + 1))
        left = int(rng.integers(0, w - p + 1))
        (hr_crop,) = augment([hr[top : top + p, left : left + p]], rng, flip=self.flip, rot90=self.rot90)
        hr_t = to_tensor(to_float_rgb(hr_crop))
        lr_t = self.degrade(hr_t, rng)
        return lr_t, hr_t


class StepSampler(Sampler[int]):
    """Global sample indices for steps ``start_step .. steps - 1`` of one process (rank) of ``world``:
    step ``t`` takes samples ``(t * world + rank) * batch + b``, ``b < batch``."""

    def __init__(self, *, start_step: int, steps: int, batch_size: int, rank: int = 0, world: int = 1):
        self.start_step, self.steps, self.batch = start_step, steps, batch_size
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.batch

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.steps):
            base = (step * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def state_dict(self) -> dict[str, int]:
        """Everything needed to continue: the data order is a function of (seed, step)."""
        return {"start_step": self.start_step, "batch_size": self.batch, "rank": self.rank, "world": self.world}


def worker_seed(seed: int, worker_id: int, start_step: int) -> int:
    return int(np.random.SeedSequence([seed, worker_id, start_step, _SALT_WORKER]).generate_state(1)[0])


class _WorkerInit:
    """Picklable worker_init_fn: one torch thread per worker, global generators seeded."""

    def __init__(self, seed: int, start_step: int):
        self.seed, self.start_step = seed, start_step

    def __call__(self, worker_id: int) -> None:
        value = worker_seed(self.seed, worker_id, self.start_step)
        apply_threads(1)
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)


def make_loader(
    dataset: TrainSet,
    *,
    batch_size: int,
    workers: int,
    start_step: int,
    steps: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches for steps ``start_step .. steps - 1``, in order, each ``(lr, hr)``."""
    sampler = StepSampler(start_step=start_step, steps=steps, batch_size=batch_size, rank=rank, world=world)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=_WorkerInit(dataset.seed, start_step) if workers else None,
        pin_memory=pin_memory,
        drop_last=False,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        # Its own generator: the loader's base-seed draw must not move the global torch generator,
        # whose state the checkpoints carry (resuming creates the loader at another point).
        generator=torch.Generator().manual_seed(dataset.seed),
    )


def build_dataset(data: DataConfig, *, scale: int, seed: int, degradation: DegradationConfig | None = None) -> TrainSet:
    """The training set a config describes (video frames are decoded now)."""
    sources, frames = collect_sources(data, scale)
    if data.train_lr and data.degradation != "bicubic":
        log.info("data.train_lr is set: training on the paired LR pictures, data.degradation is not used")
    return TrainSet(
        sources, frames, scale=scale, patch_size=data.patch_size, seed=seed,
        degradation=data.degradation, degradation_params=degradation, flip=data.flip, rot90=data.rot90,
    )
