"""The optimisation of one picture, coarse to fine: each scale in turn starts from the previous
scale's image (resized), or from the start point, and runs --iterations of the optimiser.

image → preprocess → NSTObjective (VGG features, losses, backward) → optimiser, per scale; every
iteration is recorded in the history and reported to on_progress, which may ask the run to stop.
A scale the memory plan tiles (plan.py) evaluates the same objective tile by tile (core/tiled.py),
its targets made tile by tile too, and the progress bar shows the tiles of each evaluation.
What the run writes is outputs.py's; what it reads, inputs.py's.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.files import report
from scratchnst.app.picture.inputs import Inputs
from scratchnst.app.picture.plan import scale_sizes
from scratchnst.app.picture.masks import masks_at
from scratchnst.app.picture.settings import NOISE_STD, Settings
from scratchnst.app.picture.targets import StyleTargets
from scratchnst.core import host
from scratchnst.core.backend import get_array_module, to_host
from scratchnst.core.objective import NSTObjective
from scratchnst.core.optim import OPTIMIZERS, make_optimizer
from scratchnst.core.preprocess import preprocess
from scratchnst.core.tiled import TiledObjective, tiled_features
from scratchnst.errors import ScratchnstError, user_error


class NonFiniteError(ScratchnstError):
    """The loss or gradient became NaN/inf; the last finite image was saved. Exit code 1."""

    exit_code = 1


def _nonfinite_error(iteration: int, out) -> NonFiniteError:
    kept = f" ({out})" if out is not None else ""
    return NonFiniteError(
        f"the loss or gradient became NaN/inf at iteration {iteration + 1}; kept the last "
        f"finite image{kept}. Try a lower --learning-rate or smaller --style-weight/--content-weight"
    )


def _resize_array(x, height: int, width: int):
    """Bicubic resize of a preprocessed (1, 3, h, w) array to (1, 3, height, width), on x's module.

    Runs on the host (PIL, per channel in float32): it happens once per scale change, not per evaluation.
    """
    on_host = to_host(x)
    chans = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BICUBIC)) for c in on_host[0]]
    return get_array_module(x).asarray(np.stack(chans)[None].astype(on_host.dtype))


def make_objective(net, s: Settings, content, grams: list[dict], **extra) -> NSTObjective:
    """The NSTObjective of validated Settings `s` for the preprocessed `content` (1, 3, H, W) and the
    styles' Gram targets `grams` (StyleTargets.grams); `extra`: NSTObjective's other keywords
    (content_features, pixel_terms, style_masks). The studio's study panel builds its objective here too."""
    return NSTObjective(
        net, content, None, grams=grams,
        content_layers=s.content_layers, style_layers=s.style_layers,
        content_weight=s.content_weight, style_weight=s.style_weight, tv_weight=s.tv_weight,
        style_blend=s.style_blend, style_layer_weights=s.style_layer_weights, normalize=s.normalize,
        normalize_gradients=s.normalize_gradients, **extra,
    )


class CoarseToFine:
    """One optimisation: the scales, the optimiser of the current one, the history and counters.

    After run(): `opt` holds the last image (opt.x), `history` one entry per iteration, and
    `scale_index` the scale that optimiser belongs to; checkpoint_state() is what resumes it.
    """

    def __init__(self, settings: Settings, inputs: Inputs, net, targets: StyleTargets, *, pixel_terms=None,
                 on_progress=None, after_step=None, spread=None, stop_when=None):
        """settings: validated; inputs: read (inputs.plan, the memory plan: None runs every scale
        untiled); net: the loaded VGG16; targets: the styles' Gram targets.
        pixel_terms(content (1, 3, H, W)) -> a list of objective.PixelTerm added at each scale (video's
        temporal term). on_progress(entry) is called with each history entry; a true answer asks the
        run to stop (status "interrupted", as Ctrl-C). after_step(run) runs after each recorded
        iteration (the periodic outputs). spread: where the tiles of tiled scales run (spread.Spread:
        on a Dask cluster; None: here). stop_when(history) -> a reason (str) or None, asked after each
        recorded iteration: a reason ends the scale as done before --iterations (`stopped` keeps it;
        video's stopping rule for frames started warm)."""
        self.settings, self.inputs, self.net, self.xp, self.targets = settings, inputs, net, net.xp, targets
        self.pixel_terms, self.on_progress, self.after_step = pixel_terms, on_progress, after_step
        self.spread, self.stop_when = spread, stop_when
        self.stopped: str | None = None  # stop_when's reason, once it gave one
        self.sizes = scale_sizes(settings.size, settings.scales)
        self.iterations = settings.scale_iterations()
        self.plan = inputs.plan
        if self.plan is not None and [p.size for p in self.plan.scales] != self.sizes:
            raise ScratchnstError(f"the memory plan is for scales of {[p.size for p in self.plan.scales]} px, the run's {self.sizes}")
        self.history: list[dict] = []
        self.evaluations = self.iteration = 0
        self.started, self.elapsed_before = time.perf_counter(), 0.0
        self.opt, self.scale_index, self.opt_base = None, 0, 0

    def run(self, resume_state=None) -> tuple[str, NonFiniteError | None]:
        """Optimise every scale (from `resume_state`, a read checkpoint, if given): ("done", None),
        ("interrupted", None) after Ctrl-C or a stop asked by on_progress, or ("failed", the
        NonFiniteError) when the loss or gradient became NaN/inf. Ctrl-C before the first optimiser
        exists (nothing to keep) raises KeyboardInterrupt.

        The engine's host threads and BLAS limits hold for the run only (host.engine_threads).
        NumPy's overflow/invalid warnings are silenced: non-finite values are detected by the
        optimisers and reported once, as NonFiniteError.
        """
        with host.engine_threads(), np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return self._run(resume_state)

    def _run(self, resume_state) -> tuple[str, NonFiniteError | None]:
        first_scale, opt_state = self._restore(resume_state)
        bar = report.progress_bar(sum(self.iterations), initial=self.iteration, disable=self.settings.quiet)
        status, x = "done", None
        try:
            for scale_index in range(first_scale, len(self.sizes)):
                self._start_scale(scale_index, x, opt_state, bar)
                opt_state = None
                status = self._optimise_scale(bar)
                x = self.opt.x
                if status != "done":
                    break
                self.opt.fun = None  # the finished scale's objective (targets, arena) goes before the next is made
                if scale_index + 1 < len(self.sizes):
                    self.opt.finish()  # and its L-BFGS pairs (the last scale's stay, for its checkpoint)
                bar.total = self.iteration + sum(self.iterations[scale_index + 1:])
        except KeyboardInterrupt:
            if self.opt is None:
                raise  # interrupted before there was anything to save
            status = "interrupted"
            self._record_interrupted_step()
        finally:
            bar.close()
        return status, _nonfinite_error(self.iteration, self.inputs.out) if status == "failed" else None

    def _restore(self, resume_state) -> tuple[int, dict | None]:
        """(first scale, the optimiser's state) of a resumed run, its counters and history restored;
        (0, None) for a fresh one."""
        if resume_state is None:
            return 0, None
        self.history = resume_state["history"]
        self.iteration, self.evaluations = resume_state["iteration"], resume_state["evaluations"]
        self.elapsed_before = resume_state["elapsed_s"]
        self.scale_index = resume_state["scale_index"]
        return resume_state["scale_index"], resume_state["optimizer"]

    # -- one scale ------------------------------------------------------------------------------

    def _images_at(self, long_side: int):
        """(the preprocessed content for one scale, luma-only when preserving colours; the content
        image at that size, which the styles are brought to)."""
        s = self.settings
        fitted = im.fit_long_side(self.inputs.content, long_side)
        content = im.luma_rgb(fitted) if s.color == "luminance" else fitted
        return preprocess(content, dtype=s.dtype, xp=self.xp), fitted

    def _start_point(self, content, fitted: Image.Image, long_side: int, previous):
        """The first image of a scale: the previous scale's (resized), the start image, the content,
        the first style image, or seeded noise (--init)."""
        s = self.settings
        _, _, h, w = content.shape
        if previous is not None:
            return _resize_array(previous, h, w)
        if self.inputs.start is not None:
            return preprocess(im.resize_to(self.inputs.start, w, h), dtype=s.dtype, xp=self.xp)
        if s.init == "content":
            return content.copy()
        if s.init == "style":
            style = self.targets.images(long_side, fitted)[0]
            return _resize_array(preprocess(style, dtype=s.dtype, xp=self.xp), h, w)
        rng = np.random.default_rng(s.seed)
        return self.xp.asarray(rng.normal(0.0, NOISE_STD, (1, 3, h, w)).astype(s.dtype))

    def _objective(self, content, fitted: Image.Image, long_side: int, core: int | None) -> NSTObjective:
        """The scale's NSTObjective; with a `core`, its targets made tile by tile (the content's
        activations and the styles' Gram matrices), so that no image runs through the net whole."""
        s = self.settings
        masks = self.inputs.masks
        features = None
        if core is not None:
            features = tiled_features(self.net, content, s.content_layers, core) if s.content_layers else {}
        return make_objective(
            self.net, s, content, self.targets.grams(long_side, fitted, core), content_features=features,
            pixel_terms=self.pixel_terms(content) if self.pixel_terms is not None else (),
            style_masks=masks_at(masks, content.shape[3], content.shape[2]) if masks is not None else None,
        )

    def _start_scale(self, scale_index: int, x_previous, opt_state, bar) -> None:
        """self.opt for scale `scale_index`: restored from `opt_state`, or started from the previous
        scale's image (or the start point). self.scale_index follows only once the new optimiser
        exists: until then an interrupt saves the previous scale's finished state."""
        s = self.settings
        long_side = self.sizes[scale_index]
        content, fitted = self._images_at(long_side)
        fun = self._evaluation(scale_index, content, fitted, bar)
        if opt_state is not None:
            if tuple(opt_state["x"].shape) != tuple(content.shape):
                raise ScratchnstError(
                    f"the checkpoint's image is {opt_state['x'].shape[3]}x{opt_state['x'].shape[2]} but this scale is "
                    f"{content.shape[3]}x{content.shape[2]}: the input images changed since the run was interrupted"
                )
            with user_error("the checkpoint"):  # a checkpoint of another optimiser than its manifest names
                opt = OPTIMIZERS[s.optimizer].from_state(opt_state, fun, xp=self.xp)
        else:
            opt = make_optimizer(s.optimizer, self._start_point(content, fitted, long_side, x_previous), fun, **self._optimizer_options(scale_index))
            self.evaluations += 1
        # The run's iteration count at this optimiser's iteration 0 (for the interrupt handler).
        self.opt, self.scale_index, self.opt_base = opt, scale_index, self.iteration - opt.iteration

    def _evaluation(self, scale_index: int, content, fitted: Image.Image, bar):
        """The function the scale's optimiser evaluates: the objective's evaluate, or its tiled
        evaluation where the plan tiles the scale (each tile shown on the progress bar)."""
        plan = self.plan.scales[scale_index] if self.plan is not None else None
        core = plan.core if plan is not None else None
        objective = self._objective(content, fitted, self.sizes[scale_index], core)
        if core is None:
            return objective.evaluate

        def on_tile(done: int, total: int) -> None:
            shown = report.postfix(self.history[-1]) + " " if self.history else ""
            bar.set_postfix_str(f"{shown}tile {done}/{total}")

        # Spread, each tile's forward runs on some worker: none is kept for pass 2.
        keep = plan.keep_forward and self.spread is None
        return TiledObjective(objective, core, keep_forward=keep, on_tile=on_tile, spread=self.spread).evaluate

    def _optimizer_options(self, scale_index: int) -> dict:
        s = self.settings
        opts = {"learning_rate": s.learning_rate}
        if s.optimizer == "lbfgs":
            opts["history"] = self.plan.scales[scale_index].history if self.plan is not None else s.lbfgs_history
        return opts

    def _optimise_scale(self, bar) -> str:
        """Step self.opt to this scale's iterations (or convergence, or stop_when's reason): "done";
        "failed" at a non-finite value (the start's too); "interrupted" when on_progress asks to stop."""
        while self.opt.iteration < self.iterations[self.scale_index] and not self.opt.converged:
            before = self.opt.evaluations
            self.opt.step()
            self.evaluations += self.opt.evaluations - before
            if self.opt.nonfinite:
                break
            self.iteration += 1
            if self._record():
                return "interrupted"
            bar.update(1)
            bar.set_postfix_str(report.postfix(self.history[-1]))
            if self.after_step is not None:
                self.after_step(self)
            if self.stop_when is not None and (reason := self.stop_when(self.history)):
                self.stopped = reason
                break
        return "failed" if self.opt.nonfinite else "done"

    # -- records --------------------------------------------------------------------------------

    def _record(self) -> bool:
        """Append this iteration to the history and report it; whether on_progress asks to stop."""
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
        return bool(self.on_progress(self.history[-1])) if self.on_progress is not None else False

    def _record_interrupted_step(self) -> None:
        """An interrupt that landed between opt.step() returning and its bookkeeping: record the
        finished step, so the checkpoint's counters and history agree with the optimiser's."""
        self.iteration = max(self.iteration, self.opt_base + self.opt.iteration)
        if self.iteration and (not self.history or self.history[-1]["iteration"] < self.iteration):
            self._record()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def checkpoint_state(self) -> dict:
        return {
            # A checkpoint taken between scales belongs to the scale its optimiser finished.
            "scale_index": self.scale_index,
            "iteration": self.iteration,
            "evaluations": self.evaluations,
            "elapsed_s": self.elapsed(),
            "history": self.history,
            "optimizer": self.opt.state_dict(),
        }
