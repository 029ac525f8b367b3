"""`scratchnst video`: a clip stylized frame by frame (Ruder et al. 2016), or in passes.

`scratchnst.app.video.video` is the Python entry point; it is loaded on first use, so importing one
of this package's modules (a Dask worker unpickling a flow task) loads nothing else.
"""

import importlib


def __getattr__(name: str):
    if name == "video":
        return importlib.import_module("scratchnst.app.video.framewise").video
    raise AttributeError(f"module 'scratchnst.app.video' has no attribute {name!r}")
