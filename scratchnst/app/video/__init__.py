"""`scratchnst video`: a clip stylized frame by frame (Ruder et al. 2016), or in passes.

    options.py    what video adds to the stylize settings, and its defaults
    clip.py       frames in (a video file or a folder of images) and out (a video or a folder of PNGs)
    flow.py       optical flow, warping, the consistency mask
    frame.py      one frame: read back, warped, the temporal term, stylized (Painter)
    work.py       OUT.work/: the finished frames and state.json, resume
    framewise.py  frame by frame
    multipass.py  --passes P: every frame of a pass a Dask task
    run.py        one run (VideoRun): checks, the frames, the video and the manifest; video()

`scratchnst.app.video.video` is the Python entry point; it is loaded on first use, so importing one
of this package's modules (a Dask worker unpickling a flow task) loads nothing else.
"""

import importlib


def __getattr__(name: str):
    if name == "video":
        return importlib.import_module("scratchnst.app.video.run").video
    raise AttributeError(f"module 'scratchnst.app.video' has no attribute {name!r}")
