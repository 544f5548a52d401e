"""NVDEC decode settings for ``--hwaccel cuda``: a thread count that fits its surfaces.

FFmpeg's NVDEC hwaccel allocates a fixed pool of decode surfaces when the decoder opens: the
codec's reference frames plus the current one (H.264/HEVC: up to 16 + 1), two more
(``ff_nvdec_frame_params``), and one per thread when frame threading is on
(``avcodec_get_hw_frames_parameters``). ``cuvidCreateDecoder`` refuses more than 32 surfaces
("Using more than 32 (N) decode surfaces might cause nvdec to fail"), and with software fallback
on the stream is then decoded on the CPU without a word (vsr warns: :func:`decoded_by_nvdec`).
PyAV's default thread count 0 lets FFmpeg take one thread per core (16 at most): 17 + 2 + 16 = 35
on a 16-core render node.
"""

from __future__ import annotations

MAX_SURFACES = 32  # cuvidCreateDecoder's limit
POOL_EXTRA = 2  # surfaces ff_nvdec_frame_params adds to the decoded picture buffer
MAX_DPB = 17  # H.264/HEVC: 16 reference frames + the one being decoded (AV1/VP9: 8 + 1)
# What NVDEC frames are downloaded as (FFmpeg's NVDEC surface formats); a software decode of a
# 4:2:0/4:2:2 stream gives planar formats instead.
NVDEC_FORMATS = frozenset({"nv12", "p010le", "p016le", "yuv444p", "yuv444p16le"})


def decode_threads(cores: int, *, dpb: int = MAX_DPB) -> int:
    """Decoder threads for NVDEC on a host with ``cores`` cores: as many as the cores, but no more
    than the surfaces left beside a ``dpb``-frame picture buffer (13 for the worst case), and at
    least one. The threads only parse: the decoding itself runs on the NVDEC engines."""
    return max(1, min(cores, MAX_SURFACES - POOL_EXTRA - dpb))


def decoded_by_nvdec(pix_fmt: str) -> bool:
    """Whether a frame of ``pix_fmt`` can have come from NVDEC (False: FFmpeg fell back to its
    software decoder, which it does without a word)."""
    return pix_fmt in NVDEC_FORMATS
