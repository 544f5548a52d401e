"""ESRGAN network interpolation: ``(1 - alpha) * A + alpha * B`` tensor by tensor.

Blending a PSNR-oriented model with a GAN-trained one of the same architecture trades sharpness
for fewer artefacts (Wang et al., ESRGAN section 3.4). Both models must share architecture and
hyper-parameters; anything else is refused, never reshaped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError, UsageError
from ..files import check_output, publish
from .checkpoint import save_safetensors
from .spec import ModelSpec

Tensors = dict[str, torch.Tensor]


def interpolate(a: Tensors, b: Tensors, alpha: float) -> Tensors:
    """``(1 - alpha) * a + alpha * b`` for every tensor, computed in float64, returned as float32."""
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        raise InputError(f"the two models have different tensors (e.g. {only[0]}); they cannot be interpolated")
    out = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise InputError(f"tensor {key} has shape {tuple(ta.shape)} in A and {tuple(tb.shape)} in B; they cannot be interpolated")
        out[key] = ((1.0 - alpha) * ta.double() + alpha * tb.double()).float()
    return out


def check_compatible(spec_a: ModelSpec, spec_b: ModelSpec) -> None:
    """Refuse models whose architecture or hyper-parameters differ."""
    if (spec_a.arch, spec_a.params) != (spec_b.arch, spec_b.params):
        raise InputError(
            f"cannot interpolate {spec_a.describe()} with {spec_b.describe()}: the architectures differ;"
            " both models must have the same network and hyper-parameters"
        )


def interpolate_files(ref_a: str, ref_b: str, *, alpha: float, output: Path, overwrite: bool = False) -> ModelSpec:
    """Load two models (names or paths), blend them, write ``output`` (.safetensors) atomically."""
    from . import load, resolve

    if output.suffix.lower() != ".safetensors":
        raise UsageError(f"--output {output} must end in .safetensors")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha {alpha} must be in [0, 1]")
    targets = [resolve(ref_a), resolve(ref_b)]
    check_output(output, overwrite=overwrite, inputs=tuple(t for t in targets if isinstance(t, Path)))
    model_a, model_b = load(ref_a), load(ref_b)
    check_compatible(model_a.spec, model_b.spec)
    blended = interpolate(model_a.state_dict(), model_b.state_dict(), alpha)
    extra = {"interpolation": {"a": str(ref_a), "b": str(ref_b), "alpha": alpha}}
    with publish(output, overwrite=overwrite) as tmp:
        save_safetensors(tmp, model_a.spec, blended, extra)
    return model_a.spec
