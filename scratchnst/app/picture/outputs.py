"""What a picture run writes beside OUT: the picture (colour-controlled, with the content's alpha),
OUT_iterNNNN images (--save-every), checkpoints (--checkpoint-every, and on an interrupt), the loss
plot (--plot) and the manifest OUT.json. Nothing when the run has no OUT.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.files import report
from scratchnst.app.picture import color
from scratchnst.app.picture.inputs import Inputs
from scratchnst.app.picture.settings import Settings
from scratchnst.core.backend import backend_name
from scratchnst.core.preprocess import deprocess
from scratchnst.core.vgg import layers_through
from scratchnst.errors import one_line


def picture(x, settings: Settings, content: Image.Image, alpha: Image.Image | None = None) -> Image.Image:
    """The optimiser's image x (1, 3, H, W) as RGB, colour-controlled (--color) against `content`;
    RGBA with `alpha` (resized) when the content has one."""
    rgb = deprocess(x)
    if settings.color == "luminance":
        rgb = im.preserve_colors(np.asarray(content), rgb)
    elif settings.color == "histogram":
        rgb = color.match_histograms(rgb, content)
    image = Image.fromarray(rgb)
    if alpha is not None:
        image.putalpha(alpha.resize(image.size, Image.Resampling.LANCZOS))
    return image


class Outputs:
    """The files of one run (of CoarseToFine `run`, passed to each method)."""

    def __init__(self, settings: Settings, inputs: Inputs, net):
        self.settings, self.inputs, self.net, self.out = settings, inputs, net, inputs.out

    def image(self, run) -> Image.Image:
        return picture(run.opt.x, self.settings, self.inputs.content, self.inputs.alpha)

    def periodic(self, run) -> None:
        """After an iteration: OUT_iterNNNN every --save-every, a checkpoint and manifest every
        --checkpoint-every."""
        s = self.settings
        if self.out is None:
            return
        if s.save_every and run.iteration % s.save_every == 0:
            im.save_image(self.image(run), report.iteration_path(self.out, run.iteration))
        if s.checkpoint_every and run.iteration % s.checkpoint_every == 0:
            # Checkpoint first, then the manifest that points at it: a kill between the two leaves
            # the previous (consistent) pair, or a newer checkpoint the manifest still finds.
            manifest = self.manifest(run, "running")
            manifest["checkpoint"] = str(report.write_checkpoint(self.out, run.checkpoint_state()))
            report.write_manifest(self.out, manifest)

    def manifest(self, run, status: str) -> dict:
        s, inputs = self.settings, self.inputs
        return {
            "version": report.version(),
            "status": status,
            "args": s.as_args(),
            "output": str(self.out) if self.out is not None else None,
            "content": inputs.content_src,
            "styles": inputs.styles.srcs,
            "backend": backend_name(self.net.xp),
            "dtype": s.dtype,
            "weights_sha256": self.net.weights_sha256,
            "convs": {layer.name: self.net.conv_algorithm(layer) for layer in layers_through(s.content_layers + s.style_layers) if layer.kind == "conv"},
            "content_size": list(inputs.content.size),
            "style_sizes": [list(st.size) for st in inputs.styles.images],
            "scale_sizes": run.sizes,
            "plan": inputs.plan.as_dict() if inputs.plan is not None else None,
            "evaluations": run.evaluations,
            "history": run.history,
            "final_loss": run.history[-1]["loss"] if run.history else (run.opt.loss if run.opt else None),
            "elapsed_s": round(run.elapsed(), 3),
        }

    def finish(self, run, status: str, error: Exception | None = None) -> tuple[Image.Image, dict, dict]:
        """(the final picture, the manifest, the paths written) once the run ended with `status`:
        the picture, a checkpoint when interrupted (or --checkpoint-every), the plot, the manifest."""
        image = self.image(run)
        manifest = self.manifest(run, status)
        if error is not None:
            manifest["error"] = one_line(error)
        paths = {}
        if self.out is not None:
            im.save_image(image, self.out)
            paths["image"] = str(self.out)
            if status == "interrupted" or self.settings.checkpoint_every:
                paths["checkpoint"] = str(report.write_checkpoint(self.out, run.checkpoint_state()))
                manifest["checkpoint"] = paths["checkpoint"]
            if self.settings.plot:
                paths["plot"] = str(report.write_plot(self.out, run.history))
            paths["manifest"] = str(report.write_manifest(self.out, manifest))
        return image, manifest, paths
