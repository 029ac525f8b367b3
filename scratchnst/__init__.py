"""scratchnst: neural style transfer (Gatys, Ecker & Bethge 2015) from scratch on NumPy/CuPy.

The data path: image.preprocess → vgg (features) → losses → objective (backward) → optim → image.deprocess.
"""

__version__ = "0.1.0"

from scratchnst.image import deprocess, preprocess
from scratchnst.objective import NSTObjective
from scratchnst.stylize import Result, stylize
from scratchnst.vgg import VGG16, load_vgg16
from scratchnst import gradcheck, ops

__all__ = ["NSTObjective", "Result", "VGG16", "deprocess", "gradcheck", "load_vgg16", "ops", "preprocess", "stylize"]
