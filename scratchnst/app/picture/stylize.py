"""The style-transfer workflow: images in, optimised picture out, coarse to fine.

image → preprocess → NSTObjective (VGG features, losses, backward) → optimiser → deprocess → image.
`stylize()` is the Python API; the CLI is a thin layer over it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from scratchnst.app.picture import color
from scratchnst.app.files import images as im
from scratchnst.core.preprocess import MIN_SIDE, deprocess, preprocess
from scratchnst.app.files import report
from scratchnst.app.picture.masks import check_masks, load_mask, masks_at
from scratchnst.app.files.images import DEFAULT
from scratchnst.core import host
from scratchnst.core.backend import backend_name, get_array_module, to_host
from scratchnst.errors import ScratchnstError, one_line
from scratchnst.app.picture.memory import check_fits
from scratchnst.core.objective import NSTObjective, style_grams
from scratchnst.core.vgg import layers_through
from scratchnst.core.optim import OPTIMIZERS, make_optimizer
from scratchnst.app.engine import array_module
from scratchnst.app.picture.settings import NOISE_STD, Settings
from scratchnst.app.files.weights import load_vgg16



class NonFiniteError(ScratchnstError):
    """The loss or gradient became NaN/inf; the last finite image was saved. Exit code 1."""

    exit_code = 1


@dataclass
class Result:
    image: Image.Image
    history: list[dict]
    manifest: dict
    status: str = "done"
    paths: dict = field(default_factory=dict)


def _scale_sizes(size: int, scales) -> list[int]:
    return [max(MIN_SIDE, int(round(size * s))) for s in scales]


def _resize_array(x, height: int, width: int):
    """Bicubic resize of a preprocessed (1, 3, h, w) array to (1, 3, height, width), on x's module.

    Runs on the host (PIL, per channel in float32): it happens once per scale change, not per evaluation.
    """
    host = to_host(x)
    chans = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BICUBIC)) for c in host[0]]
    return get_array_module(x).asarray(np.stack(chans)[None].astype(host.dtype))


def _check_not_an_input(out: Path, inputs) -> None:
    """ScratchnstError if the output path is (resolved, or the same file as) one of the inputs."""
    for src in inputs:
        if src is None or str(src).startswith("<"):
            continue
        same = Path(src).resolve() == out
        if not same and out.exists():
            try:
                same = os.path.samefile(src, out)
            except OSError:
                pass
        if same:
            raise ScratchnstError(f"{out}: the output would overwrite the input image {src}")


def _check_not_too_elongated(img: Image.Image, long_side: int, src: str) -> None:
    """ScratchnstError if resizing to `long_side` leaves a side shorter than the net can take."""
    w, h = img.size
    short = min(im.long_side_dims(w, h, long_side))
    if short < MIN_SIDE:
        need = math.ceil(MIN_SIDE * max(w, h) / min(w, h))
        raise ScratchnstError(
            f"{src}: a {w}x{h} image would be {short} px on its short side at {long_side} px; "
            f"the network needs at least {MIN_SIDE}: use --size ≥ {need} or a less elongated image"
        )


class Stylizer:
    """One run: settings, the loaded images and net, progress, outputs, checkpoints."""

    def __init__(self, content, styles, settings: Settings, out=None, *, on_progress=None, net=None,
                 style_cache: dict | None = None, pixel_terms=None):
        """net: an already loaded VGG16 to use when it matches the settings (batch workers keep one).
        style_cache: a dict the caller keeps across runs, holding each style's Gram matrices by image,
        size and layers (batch jobs share them). pixel_terms: pixel_terms(content (1, 3, H, W)) -> a
        list of objective.PixelTerm added at each scale (video's temporal term)."""
        styles = [None] if styles is None else list(styles)
        if not styles:
            raise ScratchnstError("give at least one style image")
        self.settings = settings.validated(len(styles))
        self.out = im.check_output_path(out) if out is not None else None
        self.content, self.content_src = im.open_image(content, "content")
        self.alpha = im.content_alpha(content)
        loaded = [im.open_image(s, "style") for s in styles]
        self.styles = [img for img, _ in loaded]
        self.style_srcs = [src for _, src in loaded]
        s = self.settings
        self.init_image = None
        if s.init not in ("noise", "content", "style"):
            self.init_image = im.load_image(s.init)
        if self.out is not None:
            inputs = [self.content_src, *self.style_srcs] + ([s.init] if self.init_image is not None else [])
            inputs += [m for m in s.style_masks or () if isinstance(m, (str, os.PathLike))]
            _check_not_an_input(self.out, inputs)
        self._read_controls()
        self.sizes = _scale_sizes(s.size, s.scales)
        _check_not_too_elongated(self.content, self.sizes[-1], self.content_src)
        for st, src in zip(self.styles, self.style_srcs):
            _check_not_too_elongated(st, int(round(self.sizes[-1] * s.style_scale)), src)
        # Cheap checks are done; refuse a run that cannot fit before the net is allocated.
        self.memory_estimate = check_fits(s, self.content.size, [st.size for st in self.styles], array_module(s.backend))
        wanted = (backend_name(array_module(s.backend)), s.dtype, s.pooling, s.conv)
        if net is None or (backend_name(net.xp), str(net.dtype), net.pooling, net.conv) != wanted:
            net = load_vgg16(s.weights, backend=s.backend, dtype=s.dtype, pooling=s.pooling, conv=s.conv)
        self.net = net
        self.style_cache, self.pixel_terms = style_cache, pixel_terms
        self.xp = self.net.xp
        self.on_progress = on_progress
        self.history: list[dict] = []
        self.evaluations = 0
        self.iteration = 0
        self.started = time.perf_counter()
        self.elapsed_before = 0.0

    def _read_controls(self) -> None:
        """self.masks: the style masks as (H, W) weights, checked (None without --style-masks); a note
        when the content's alpha cannot be kept in the output's format."""
        s = self.settings
        self.masks = None
        if s.style_masks is not None:
            self.masks = [load_mask(m, k) for k, m in enumerate(s.style_masks)]
            check_masks(self.masks, s.style_masks, self.content.size)
        if self.alpha is not None and self.out is not None and im.SAVE_FORMATS[self.out.suffix.lower()] not in im.ALPHA_FORMATS:
            print(f"{self.out.name}: note: {self.out.suffix} cannot carry the content's alpha; use .png or .webp to keep it", file=sys.stderr)

    # -- one scale ------------------------------------------------------------------------------

    def _images_at(self, long_side: int):
        """Preprocessed content and styles for one scale (luma-only when preserving colours)."""
        s = self.settings
        content = im.fit_long_side(self.content, long_side)
        styles = [im.fit_long_side(st, int(round(long_side * s.style_scale))) for st in self.styles]
        if s.color == "luminance":
            styles = [im.match_luminance(st, content) for st in styles]
            content = im.luma_rgb(content)
        elif s.color == "linear":
            styles = [color.linear_transfer(st, content) for st in styles]
        prep = lambda img: preprocess(img, dtype=s.dtype, xp=self.xp)
        return prep(content), [prep(st) for st in styles]

    def _start_point(self, content, styles, previous):
        s = self.settings
        _, _, h, w = content.shape
        if previous is not None:
            return _resize_array(previous, h, w)
        if s.init == "content":
            return content.copy()
        if s.init == "style":
            return _resize_array(styles[0], h, w)
        if s.init == "noise":
            rng = np.random.default_rng(s.seed)
            return self.xp.asarray(rng.normal(0.0, NOISE_STD, (1, 3, h, w)).astype(s.dtype))
        return preprocess(im.resize_to(self.init_image, w, h), dtype=s.dtype, xp=self.xp)

    def _objective(self, content, styles) -> NSTObjective:
        s = self.settings
        return NSTObjective(
            self.net, content, None, grams=[self._grams(src, style) for src, style in zip(self.style_srcs, styles)],
            content_layers=s.content_layers, style_layers=s.style_layers,
            content_weight=s.content_weight, style_weight=s.style_weight, tv_weight=s.tv_weight,
            style_blend=s.style_blend, style_layer_weights=s.style_layer_weights, normalize=s.normalize,
            pixel_terms=self.pixel_terms(content) if self.pixel_terms is not None else (),
            style_masks=masks_at(self.masks, content.shape[3], content.shape[2]) if self.masks is not None else None,
            normalize_gradients=s.normalize_gradients,
        )

    def _grams(self, src: str, style) -> dict:
        """style_grams of one preprocessed style image, from self.style_cache when it has them."""
        s = self.settings
        key = (src, tuple(style.shape), s.style_layers, s.pooling, s.dtype, backend_name(self.xp))
        shareable = self.style_cache is not None and s.color not in ("luminance", "linear") and not (src.startswith("<") and src != DEFAULT)
        if not shareable:  # in-memory images have no name to share by; these colour modes mix in the content
            return style_grams(self.net, style, s.style_layers)
        if key not in self.style_cache:
            self.style_cache[key] = style_grams(self.net, style, s.style_layers)
        return self.style_cache[key]

    # -- the run --------------------------------------------------------------------------------

    def run(self, *, resume_state=None) -> Result:
        """Optimise every scale (from `resume_state`, a read checkpoint, if given); write the outputs.

        The engine's host threads and BLAS limits hold for the run only (host.engine_threads).
        NumPy's overflow/invalid warnings are silenced: non-finite values are detected by the
        optimisers and reported once, as NonFiniteError.
        """
        with host.engine_threads(), np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return self._run(resume_state)

    def _run(self, resume_state) -> Result:
        first_scale, opt_state = 0, None
        if resume_state is not None:
            first_scale, opt_state = resume_state["scale_index"], resume_state["optimizer"]
            self.history = resume_state["history"]
            self.iteration, self.evaluations = resume_state["iteration"], resume_state["evaluations"]
            self.elapsed_before = resume_state["elapsed_s"]
        self.scale_index, self.opt, self.opt_base = first_scale, None, None
        bar = report.progress_bar(self.settings.iterations * len(self.sizes), initial=self.iteration, disable=self.settings.quiet)
        status, error, x = "done", None, None
        try:
            for scale_index in range(first_scale, len(self.sizes)):
                self._start_scale(scale_index, x, opt_state)
                opt_state = None
                self._optimise_scale(bar)
                x = self.opt.x
                if self.opt.nonfinite:
                    status, error = "failed", self._nonfinite_error()
                    break
                bar.total = self.iteration + self.settings.iterations * (len(self.sizes) - scale_index - 1)
        except KeyboardInterrupt:
            status = "interrupted"
            self._record_interrupted_step()
        finally:
            bar.close()
        result = self._finish(status, error)
        if error is not None:
            error.result = result
            raise error
        return result

    def _start_scale(self, scale_index: int, x_previous, opt_state) -> None:
        """self.opt for scale `scale_index`: restored from `opt_state`, or started from the previous
        scale's image (or the init). self.scale_index follows only once the new optimiser exists:
        until then an interrupt saves the previous scale's finished state."""
        s = self.settings
        content, styles = self._images_at(self.sizes[scale_index])
        fun = self._objective(content, styles).evaluate
        if opt_state is not None:
            if tuple(opt_state["x"].shape) != tuple(content.shape):
                raise ScratchnstError(
                    f"the checkpoint's image is {opt_state['x'].shape[3]}x{opt_state['x'].shape[2]} but this scale is "
                    f"{content.shape[3]}x{content.shape[2]}: the input images changed since the run was interrupted"
                )
            opt = OPTIMIZERS[s.optimizer].from_state(opt_state, fun, xp=self.xp)
        else:
            opt = make_optimizer(s.optimizer, self._start_point(content, styles, x_previous), fun, **self._optimizer_options())
            self.evaluations += 1
        # The run's iteration count at this optimiser's iteration 0 (for the interrupt handler).
        self.opt, self.scale_index, self.opt_base = opt, scale_index, self.iteration - opt.iteration

    def _optimise_scale(self, bar) -> None:
        """Step self.opt to this scale's iterations (or convergence, or a non-finite value)."""
        while self.opt.iteration < self.settings.iterations and not self.opt.converged:
            before = self.opt.evaluations
            self.opt.step()
            self.evaluations += self.opt.evaluations - before
            if self.opt.nonfinite:
                return
            self.iteration += 1
            self._record()
            bar.update(1)
            bar.set_postfix_str(report.postfix(self.history[-1]))
            self._periodic_outputs()

    def _nonfinite_error(self) -> "NonFiniteError":
        kept = f" ({self.out})" if self.out is not None else ""
        return NonFiniteError(
            f"the loss or gradient became NaN/inf at iteration {self.iteration + 1}; kept the last "
            f"finite image{kept}. Try a lower --learning-rate or smaller --style-weight/--content-weight"
        )

    def _record_interrupted_step(self) -> None:
        """An interrupt that landed between opt.step() returning and its bookkeeping: record the
        finished step, so the checkpoint's counters and history agree with the optimiser's."""
        if self.opt is None:
            return
        self.iteration = max(self.iteration, self.opt_base + self.opt.iteration)
        if self.iteration and (not self.history or self.history[-1]["iteration"] < self.iteration):
            self._record()

    def _optimizer_options(self) -> dict:
        s = self.settings
        opts = {"learning_rate": s.learning_rate}
        if s.optimizer == "lbfgs":
            opts["history"] = s.lbfgs_history
        return opts

    def _record(self) -> None:
        terms = self.opt.info or {}  # the loss terms of the point the optimiser accepted
        self.history.append({
            "iteration": self.iteration,
            "scale": self.scale_index,
            "size": self.sizes[self.scale_index],
            "evaluations": self.evaluations,
            "loss": self.opt.loss,
            "content": terms.get("content"),
            "style": terms.get("style"),
            "tv": terms.get("tv"),
            **{name: value for name, value in terms.items() if name not in ("content", "style", "tv")},  # pixel terms
            "seconds": round(self.elapsed(), 3),
        })
        if self.on_progress is not None:
            self.on_progress(self.history[-1])

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def current_image(self) -> Image.Image:
        """The optimiser's image as RGB, colour-controlled; RGBA with the content's alpha (resized)
        when the content has one."""
        rgb = deprocess(self.opt.x)
        if self.settings.color == "luminance":
            rgb = im.preserve_colors(np.asarray(self.content), rgb)
        elif self.settings.color == "histogram":
            rgb = color.match_histograms(rgb, self.content)
        image = Image.fromarray(rgb)
        if self.alpha is not None:
            image.putalpha(self.alpha.resize(image.size, Image.Resampling.LANCZOS))
        return image

    def _periodic_outputs(self) -> None:
        s = self.settings
        if self.out is None:
            return
        if s.save_every and self.iteration % s.save_every == 0:
            im.save_image(self.current_image(), report.iteration_path(self.out, self.iteration))
        if s.checkpoint_every and self.iteration % s.checkpoint_every == 0:
            # Checkpoint first, then the manifest that points at it: a kill between the two leaves
            # the previous (consistent) pair, or a newer checkpoint the manifest still finds.
            manifest = self._manifest("running")
            manifest["checkpoint"] = str(report.write_checkpoint(self.out, self._checkpoint_state()))
            report.write_manifest(self.out, manifest)

    def _checkpoint_state(self) -> dict:
        return {
            # A checkpoint taken between scales belongs to the scale its optimiser finished.
            "scale_index": self.scale_index,
            "iteration": self.iteration,
            "evaluations": self.evaluations,
            "elapsed_s": self.elapsed(),
            "history": self.history,
            "optimizer": self.opt.state_dict(),
        }

    def _manifest(self, status: str) -> dict:
        s = self.settings
        return {
            "version": report.version(),
            "status": status,
            "args": s.as_args(),
            "output": str(self.out) if self.out is not None else None,
            "content": self.content_src,
            "styles": self.style_srcs,
            "backend": backend_name(self.xp),
            "dtype": s.dtype,
            "weights_sha256": self.net.weights_sha256,
            "convs": {layer.name: self.net.conv_algorithm(layer) for layer in layers_through(s.content_layers + s.style_layers) if layer.kind == "conv"},
            "content_size": list(self.content.size),
            "style_sizes": [list(st.size) for st in self.styles],
            "scale_sizes": self.sizes,
            "evaluations": self.evaluations,
            "history": self.history,
            "final_loss": self.history[-1]["loss"] if self.history else (self.opt.loss if self.opt else None),
            "elapsed_s": round(self.elapsed(), 3),
        }

    def _finish(self, status: str, error: Exception | None = None) -> Result:
        if self.opt is None:
            raise KeyboardInterrupt  # interrupted before there was anything to save
        image = self.current_image()
        manifest = self._manifest(status)
        if error is not None:
            manifest["error"] = one_line(error)
        paths = {}
        if self.out is not None:
            im.save_image(image, self.out)
            paths["image"] = str(self.out)
            if status == "interrupted" or self.settings.checkpoint_every:
                paths["checkpoint"] = str(report.write_checkpoint(self.out, self._checkpoint_state()))
                manifest["checkpoint"] = paths["checkpoint"]
            if self.settings.plot:
                paths["plot"] = str(report.write_plot(self.out, self.history))
            paths["manifest"] = str(report.write_manifest(self.out, manifest))
        return Result(image, self.history, manifest, status, paths)


def stylize(content=None, styles=None, *, out=None, on_progress=None, net=None, style_cache=None, **options) -> Result:
    """Stylize `content` with `styles` (paths, PIL images or uint8 RGB arrays; both default to the
    embedded pair). Options are the Settings fields (size, iterations, scales, content_weight, ...).
    With `out`, writes the image, the manifest (OUT with .json) and the extras the options ask for.
    Returns a Result (image as PIL, history, manifest dict, status "done" or "interrupted").
    A non-finite loss/gradient raises NonFiniteError after saving the last finite image (status
    "failed"; the Result is on the exception's `.result`). net, style_cache: see Stylizer.
    """
    if isinstance(styles, (str, os.PathLike, Image.Image)):
        styles = [styles]
    return Stylizer(content, styles, Settings(**options), out, on_progress=on_progress, net=net, style_cache=style_cache).run()


def resume(manifest_path, *, quiet=None, on_progress=None, net=None, style_cache=None) -> Result:
    """Continue the interrupted run described by `manifest_path` (OUT.json) to its end."""
    manifest, state = report.read_resumable(manifest_path)
    settings = Settings.from_args(manifest["args"])
    if quiet is not None:
        settings.quiet = quiet
    sources = [manifest["content"], *manifest["styles"], *(manifest["args"].get("style_masks") or [])]
    if any(src.startswith("<") and src != DEFAULT for src in sources):
        raise ScratchnstError(f"{manifest_path}: the run used in-memory images, which cannot be reloaded to resume")
    content, *styles = sources[: 1 + len(manifest["styles"])]
    stylizer = Stylizer(content, styles, settings, manifest["output"], on_progress=on_progress, net=net, style_cache=style_cache)
    return stylizer.run(resume_state=state)
