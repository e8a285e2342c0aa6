"""transformers' image processors on their PIL backend, whether torchvision is installed or not.

transformers 5 has two classes per image processor: ``<Model>ImageProcessor`` on
torchvision and ``<Model>ImageProcessorPil`` on PIL and NumPy. This package does not
install torchvision, and without it the first name falls back to the second with a
warning. Two places meet that:

* the depth service loads its processor with ``backend="pil"`` (:data:`BACKEND`), the
  argument ``AutoImageProcessor.from_pretrained`` documents for choosing one, so depth
  maps are computed the same way whether torchvision is installed or not;
* diffusers imports ``CLIPImageProcessor`` and ``SiglipImageProcessor`` from transformers
  when its Stable Diffusion pipelines are imported (for the safety checker's feature
  extractor and IP-Adapters, neither of which this package loads), so every process that
  imported them warned twice (``models tiny``, DEBUG logs, the tests). :func:`use_pil_classes`
  gives those names the PIL classes before diffusers is imported, which is what
  transformers' fallback does, minus its warning.
"""

from __future__ import annotations

import sys

BACKEND = "pil"
"""The image-processor backend this package asks transformers for."""

# The names diffusers' pipeline modules import (pipeline_stable_diffusion.py,
# loaders/ip_adapter.py in diffusers 0.42).
DIFFUSERS_IMPORTS = ("CLIPImageProcessor", "SiglipImageProcessor")


def use_pil_classes() -> None:
    """Without torchvision, make ``transformers.<Name>`` the ``<Name>Pil`` class for the
    names diffusers imports; call before importing diffusers' pipelines. With torchvision
    installed nothing changes (nothing warns then)."""
    import transformers
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    for name in DIFFUSERS_IMPORTS:
        pil = getattr(transformers, f"{name}Pil", None)
        # Loading a class can put a new module object under sys.modules["transformers"]
        # (seen with transformers 5.24): bind the name on the one imports will find.
        module = sys.modules["transformers"]
        if pil is not None and name not in vars(module):
            setattr(module, name, pil)
