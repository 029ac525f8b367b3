"""scratchnst: neural style transfer (Gatys, Ecker & Bethge 2015) from scratch on NumPy/CuPy.

The data path is scratchnst.core: preprocess → vgg (features) → losses → objective (backward) →
optim → deprocess. The application (CLI, stylize workflow, weights, study page) is scratchnst.app.
The public API below is loaded on first use, so importing the core loads nothing of the application.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "NSTObjective": "scratchnst.core.objective",
    "VGG16": "scratchnst.core.vgg",
    "preprocess": "scratchnst.core.preprocess",
    "deprocess": "scratchnst.core.preprocess",
    "load_vgg16": "scratchnst.app.files.weights",
    "stylize": "scratchnst.app.picture.stylize",
    "Result": "scratchnst.app.picture.stylize",
    "batch": "scratchnst.app.batch",
    "ops": "scratchnst.core",
    "gradcheck": "scratchnst",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'scratchnst' has no attribute {name!r}")
    module = _API[name]
    value = importlib.import_module(f"{module}.{name}") if name in ("ops", "gradcheck") else getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
