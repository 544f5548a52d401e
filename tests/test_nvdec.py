"""``--hwaccel cuda``: a decoder thread count that fits NVDEC's surfaces, on the engine's GPU."""

from __future__ import annotations

import logging

import pytest

from vsr.media.nvdec import MAX_SURFACES, POOL_EXTRA, decode_threads, decoded_by_nvdec


def test_threads_fit_nvdecs_32_surfaces_on_a_16_core_host():
    # 17 reference + current frames, 2 spare, one per frame thread: 16 threads would need 35.
    assert 17 + POOL_EXTRA + 16 > MAX_SURFACES
    assert decode_threads(16) == 13 and 17 + POOL_EXTRA + decode_threads(16) == MAX_SURFACES
    assert decode_threads(128) == 13
    assert decode_threads(4) == 4 and decode_threads(1) == 1 and decode_threads(0) == 1
    assert decode_threads(64, dpb=9) == 21  # AV1/VP9: 8 references + 1


def test_software_fallback_is_recognised_by_the_frame_format():
    assert decoded_by_nvdec("nv12") and decoded_by_nvdec("p010le")
    assert not decoded_by_nvdec("yuv420p") and not decoded_by_nvdec("yuv422p10le")


@pytest.mark.needs_cuda
def test_nvdec_decodes_on_the_engines_gpu_with_its_thread_count(tmp_path, caplog):
    import ctypes
    import os

    import torch

    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        pytest.skip("no NVDEC library (libnvcuvid.so.1) on this machine: FFmpeg can only decode in software")

    import media
    from vsr.media.decode import iter_media, open_input

    # The CLI turns propagation off on "vsr" once it has run in this process: listen here directly.
    logging.getLogger("vsr.media.decode").addHandler(caplog.handler)
    src = media.h264_aac_mp4(tmp_path)
    index = torch.cuda.device_count() - 1  # the last GPU: not FFmpeg's default unless there is one
    container, info = open_input(src, hwaccel="cuda", hwaccel_device=index)
    try:
        video = container.streams[info.stream_index]
        frames = [f for f in iter_media(container, info, copy_streams=()) if hasattr(f, "planes")]
        cc = video.codec_context
        assert cc.is_hwaccel and cc.thread_count == decode_threads(os.cpu_count() or 1)
    finally:
        container.close()
    assert len(frames) == 8 and frames[0].pix_fmt == "yuv420p"
    logging.getLogger("vsr.media.decode").removeHandler(caplog.handler)
    assert "NVDEC cannot decode" not in caplog.text
    # NVDEC hands out NV12 surfaces (software decoding of this clip gives yuv420p): the decode ran
    # on the GPU, not on the silent software fallback.
    container, info = open_input(src, hwaccel="cuda", hwaccel_device=index)
    try:
        video = container.streams[info.stream_index]
        video.codec_context.thread_count = decode_threads(os.cpu_count() or 1)
        first = next(container.decode(video))
        assert first.format.name == "nv12"
    finally:
        container.close()
