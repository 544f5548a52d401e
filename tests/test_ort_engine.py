"""onnxruntime engine details beyond the conformance suite (tests/test_engines.py): the torch
stream handed to the CUDA/TensorRT providers, and an output buffer of the graph output's type."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import crop, psnr, tiny_srvgg
from vsr.kernels import quantize

needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason='needs onnx, onnxscript and onnxruntime: pip install "vsr[onnx]"',
)


def test_compute_stream_goes_to_the_cuda_and_tensorrt_providers_only():
    from vsr.engines.ort_engine import with_compute_stream

    given = [
        ("TensorrtExecutionProvider", {"device_id": 1, "trt_engine_cache_enable": True}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    out = with_compute_stream(given, 0x7F00DEAD)
    assert out[0] == ("TensorrtExecutionProvider", {"device_id": 1, "trt_engine_cache_enable": True,
                                                     "user_compute_stream": str(0x7F00DEAD), "has_user_compute_stream": "1"})
    assert out[1] == ("CUDAExecutionProvider", {"device_id": 1, "user_compute_stream": str(0x7F00DEAD)})
    assert out[2] == "CPUExecutionProvider"
    assert given[1] == ("CUDAExecutionProvider", {"device_id": 1})  # the caller's list is left alone
    assert with_compute_stream(["CUDAExecutionProvider"], 5) == [("CUDAExecutionProvider", {"user_compute_stream": "5"})]
    with pytest.raises(ValueError, match="legacy default stream"):
        with_compute_stream(given, 0)  # onnxruntime reads 0 as "no stream" and would run unordered


def _fp16_graph_with_fp32_output() -> bytes:
    """A real fp16 export of a small network, its output cast to float32 at the end (a mixed
    graph, as converters write them)."""
    import onnx
    from onnx import TensorProto, helper

    from vsr.engines.onnx_export import build_onnx

    proto = onnx.load_from_string(build_onnx(tiny_srvgg(), fp16=True, dynamic=True))
    graph = proto.graph
    name = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{name}_fp16" if o == name else o for o in node.output]
    graph.node.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT))
    graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


@needs_onnx
def test_output_buffer_takes_the_output_type_not_the_input_type():
    from vsr.engines import TorchEngine
    from vsr.engines.ort_engine import OrtEngine

    engine = OrtEngine(_fp16_graph_with_fp32_output())
    assert engine.dtype == torch.float16 and engine.out_dtype == torch.float32
    x = torch.from_numpy(crop("astronaut", 100, 180, 40, 48)).permute(2, 0, 1)[None].float() / 255
    y = engine(x)
    assert y.dtype == torch.float32 and y.shape == (1, 3, 160, 192)
    ref = TorchEngine(tiny_srvgg(), device=torch.device("cpu"))(x)
    assert psnr(quantize(y, 8), quantize(ref, 8)) >= 45
