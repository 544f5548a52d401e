"""Export a trained generator from a run folder (or one ``step_*.pt``) to a model file for ``vsr run``.

* ``.safetensors``: vsr's own format (``vsr.models.checkpoint.save_safetensors``) with the
  architecture and hyper-parameters in the metadata, plus the step and whether the EMA was used.
* ``.pth``: Real-ESRGAN's layout, ``{"params_ema": state_dict}`` (``{"params": ...}`` without EMA),
  which Real-ESRGAN, BasicSR, chaiNNer and vsr itself read.

Both load with ``vsr.models.load(path)`` unchanged. The file is written under a private temporary
name and published into place (:func:`vsr.files.publish`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import InputError, OutputError, UsageError
from ..models.spec import ModelSpec
from ..files import check_output, publish
from . import checkpoint as ckpt

log = logging.getLogger(__name__)

FORMATS = (".safetensors", ".pth")


def export_run(run_dir: str | Path, output: str | Path, *, use_ema: bool = True, overwrite: bool = False) -> Path:
    """Write the generator of the newest checkpoint in ``run_dir`` (or of the ``step_*.pt`` given)
    to ``output`` (``.safetensors`` or ``.pth``); the EMA weights unless ``use_ema`` is False or the
    run had no EMA. Returns the output path."""
    output = Path(output).expanduser()
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"--output {output} must end in .safetensors or .pth (Real-ESRGAN params_ema layout)")
    check_output(output, overwrite=overwrite)
    source = ckpt.resolve_checkpoint(run_dir)
    state = ckpt.load_checkpoint(source)
    spec_info = state.get("spec") or {}
    from ..models import registry

    if spec_info.get("arch") not in registry.ARCHITECTURES:
        raise InputError(f"checkpoint {source} does not say which network it holds; was it written by vsr train?")
    key = "params_ema" if use_ema and state.get("params_ema") is not None else "params"
    if use_ema and key == "params":
        log.warning("%s has no EMA weights (train.ema = 0); exporting the raw generator", source.name)
    tensors = {k: v.float().contiguous() for k, v in state[key].items()}
    model = registry.build(spec_info["arch"], **spec_info["params"])
    model.load_state_dict(tensors, strict=True)  # proves the tensors fit before anything is written
    spec: ModelSpec = model.spec
    with publish(output, overwrite=overwrite) as tmp:
        if suffix == ".safetensors":
            from ..models.checkpoint import save_safetensors

            save_safetensors(tmp, spec, tensors, extra={"source": "vsr train", "step": int(state["step"]), "weights": key})
        else:
            try:
                torch.save({key: tensors}, tmp)
            except OSError as err:
                raise OutputError(f"cannot write {output} ({err.strerror or err}); check free space and permissions") from err
    log.info("exported %s (%s, step %d, %s) to %s", source.name, spec.describe(), state["step"], key, output)
    return output
