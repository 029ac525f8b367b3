"""scratchnst: neural style transfer (Gatys, Ecker & Bethge 2015) from scratch on NumPy/CuPy.

The data path: image.preprocess → vgg (features) → losses → objective (backward) → optim → image.deprocess.
"""

__version__ = "0.1.0"

from scratchnst.app.images import deprocess, preprocess
from scratchnst.core.objective import NSTObjective
from scratchnst.app.stylize import Result, stylize
from scratchnst.app.batch import batch
from scratchnst.app.weights import load_vgg16
from scratchnst.core.vgg import VGG16
from scratchnst import gradcheck
from scratchnst.core import ops

__all__ = ["NSTObjective", "Result", "VGG16", "batch", "deprocess", "gradcheck", "load_vgg16", "ops", "preprocess", "stylize"]
