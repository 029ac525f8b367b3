"""The Gatys et al. objective over the input pixels and its gradient, from our own backward passes.

    L(x) = α Σ_{l∈C} E_content,l  +  β Σ_{l∈S} w_l E_style,l  +  γ TV(x)

with E_content,l = ½ Σ (F_l(x) − P_l)² and E_style,l = Σ (G_l(x) − A_l)² / (4 N_l² M_l²) (N_l channels,
M_l positions). The style term is already free of the image size (G grows with M, and is divided by
M²); the content term and TV grow with the number of pixels, so with the seed article's raw formula
(normalize="none") the same α, β, γ stylize strongly at 128 px and hardly at 1024 px. With
normalize="size" the content term is divided by N_l·M_l (a mean over the layer's activations) and TV
by 3·H·W (a mean over the pixel values), so the same weights give the same balance at any size.

Spatial control (Gatys et al. 2017, style_masks): one mask m_k per style image, marking where in x
style k applies. The style term at layer l becomes a sum over regions,
    E_style,l = Σ_k Σ (Ĝ_l^k(x) − Â_l^k)² / (4 N_l²),  Ĝ_l^k = F_l diag(m_k,l) F_lᵀ / Σ m_k,l,
with Â_l^k = G_l(style_k) / M_l^k and m_k,l the mask average-pooled in the net's own 2×2 steps to
layer l's grid (losses.masked_style_loss). Each style keeps its own Â (no blend); where masks
overlap their terms add, where none covers only content and TV act. With one mask of ones this is the
unmasked term exactly.

normalize_gradients (neural-style's option): each content and style layer's gradient is divided by
its L1 norm before it joins the backward pass. The result is then no longer the gradient of L (nor
of any one scalar): fine for Adam, which only follows a direction, but an L-BFGS line search relies
on loss and gradient agreeing, so the application allows it with Adam only.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

from scratchnst.core import host, ops
from scratchnst.core.checks import check_choice
from scratchnst.core.losses import content_loss, regions_style_loss, style_loss, tv_loss
from scratchnst.core.vgg import LAYERS, LAYER_NAMES, check_layers, spatial_size

CONTENT_LAYERS = ("relu4_1",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
NORMALIZATIONS = ("size", "none")
# Default (α, β, γ) for each normalisation, tuned by eye (docs/benchmarks.md, "The same look at every
# size"). The "none" weights are the seed formula's, tuned at 384 px; the "size" ones give that look at
# every size.
DEFAULT_WEIGHTS = {"none": (1.0, 3e2, 1e-3), "size": (1.0, 3e-4, 4e-4)}
L1_EPS = 1e-8  # normalize_gradients divides each layer's gradient by its L1 norm + L1_EPS (never by 0)


class Term(NamedTuple):
    """One loss term: what it is, where it reads, its weight in L, its value and its gradient."""

    name: str  # "content", "style" or "tv"
    layer: str | None  # the VGG layer whose activation it reads; None for TV (the image itself)
    weight: float  # its factor in L: α, β·w_l or γ
    value: object  # its unweighted value (a 0-d array on the input's module)
    grad: object  # d value / d(its input): that layer's activation, or the image for TV


class PixelTerm(NamedTuple):
    """A term on the image itself, beside TV (video's temporal term, for one): fn(x) -> (value, dx)."""

    name: str
    weight: float
    fn: object


def style_grams(net, style, layers: Sequence[str]) -> dict:
    """{layer: (G, M)}: the unnormalised Gram matrix (1, C, C) of a preprocessed style image at each
    layer, and the M positions it sums over. What NSTObjective needs of a style image, computed once
    for any number of objectives (batch runs share it between jobs)."""
    feats = net.extract(net.xp.asarray(style, dtype=net.dtype), layers)
    return {layer: (ops.gram_forward(f)[0], f.shape[2] * f.shape[3]) for layer, f in feats.items()}


class Evaluation(NamedTuple):
    """L(x), dL/dx, and the unweighted totals {"content", "style" (Σ_l w_l E_l), "tv"} as floats."""

    loss: float
    grad: object
    terms: dict


def check_weight(name: str, value: float) -> float:
    """value as a float, or ValueError naming `name` ("style_weight must be ...") unless it is a
    finite number ≥ 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (got {value!r})") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0 (got {value!r})")
    return value


def check_weights(
    name: str, values: Sequence[float] | None, count: int, what: str, *, nonzero_sum: bool = False
) -> tuple[float, ...] | None:
    """One finite weight ≥ 0 per item (None stays None), and with nonzero_sum not all 0;
    ValueError naming `name` otherwise."""
    if values is None:
        return None
    values = tuple(check_weight(name, v) for v in values)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} values for {count} {what}")
    if nonzero_sum and sum(values) <= 0:
        raise ValueError(f"{name} must not sum to 0")
    return values


def check_normalize(normalize: str) -> str:
    """normalize, one of NORMALIZATIONS; ValueError otherwise."""
    return check_choice("normalize", normalize, NORMALIZATIONS)


def check_mask_count(n_masks: int, n_styles: int, style_blend, masks: str = "style_masks", blend: str = "style_blend") -> None:
    """ValueError unless there is one mask per style image and no blend (regions replace it); `masks`
    and `blend` are the names the message gives the two."""
    if n_masks != n_styles:
        raise ValueError(f"{masks} has {n_masks} masks for {n_styles} style images (one mask per style)")
    if style_blend is not None:
        raise ValueError(f"{blend} mixes the styles everywhere; with {masks} each style has its own region")


def style_targets(grams: Sequence[dict], blend: Sequence[float], positions: dict) -> dict:
    """{layer: A_l} for the layers of `positions` ({layer: M_l, the generated image's positions}):
    the style images' Gram matrices (style_grams: (G_l^k, M_l^k)) blended and rescaled to M_l,
    A_l = Σ_k b_k (M_l / M_l^k) G_l^k."""
    targets = {layer: 0 for layer in positions}
    for b, per_layer in zip(blend, grams):
        for layer, m_x in positions.items():
            g, m_style = per_layer[layer]
            targets[layer] = targets[layer] + (b * m_x / m_style) * g
    return targets


def region_targets(masks: Sequence, grams: Sequence[dict], layers: Sequence[str]) -> dict:
    """{layer: [(mask on the layer's grid, Â = G_style / M_style), ...]}, one pair per style image,
    for (1, 1, H, W) masks on the image's grid.

    A region floored away on a coarse grid (all its mask in a dropped last row) adds nothing there."""
    regions = {}
    for layer in layers:
        pairs = [(layer_mask(m, layer), per[layer][0] / per[layer][1]) for m, per in zip(masks, grams)]
        regions[layer] = [(m, a_hat) for m, a_hat in pairs if float(m.sum()) > 0]
    return regions


def layer_mask(mask, layer: str):
    """A (1, 1, H, W) mask on the image's grid -> `layer`'s grid, average-pooled in the net's 2×2 steps
    (each 2×2 pool of VGG floors the halving, so the pooled mask lines up with the activations)."""
    for _ in range(LAYERS[LAYER_NAMES.index(layer)].pools):
        mask = ops.avgpool2d_forward(mask, 2, 2)[0]
    return mask


@dataclass(frozen=True)
class ObjectiveOptions:
    """What shapes L: its layers, the weights of its terms and how they are normalised.

    NSTObjective takes these as an `options` object or as keywords of the same names, and checks
    them (ValueError naming the parameter). Weights left None take DEFAULT_WEIGHTS[normalize].
    """

    content_layers: Sequence[str] = CONTENT_LAYERS
    style_layers: Sequence[str] = STYLE_LAYERS
    content_weight: float | None = None  # α
    style_weight: float | None = None  # β
    tv_weight: float | None = None  # γ
    style_blend: Sequence[float] | None = None  # b_k, one per style image, scaled to sum 1 (None: equal)
    style_layer_weights: Sequence[float] | None = None  # w_l, one per style layer (None: 1 / their count)
    normalize: str = "none"  # NORMALIZATIONS: "size" makes the weights mean the same at any size
    normalize_gradients: bool = False  # each layer's gradient to L1 norm 1 (then not the gradient of L)


class NSTObjective:
    """L(x) and dL/dx for one content image and one or more style images.

    content: (1, 3, H, W), styles: list of (1, 3, H_k, W_k), all preprocessed; host or device arrays.
    Style images may have any size: a style Gram matrix is computed at the style's own size M^k and
    rescaled by M_l / M_l^k to the generated image's size, so that A_l means the same per-position
    statistics (with equal sizes this is exactly A_l = Σ_k b_k G_l(style_k)).

    options: ObjectiveOptions (layers, weights, normalisation); `keywords` set its fields by name,
    NSTObjective(net, content, styles, style_weight=1e3, normalize="size"). Weights left None take
    DEFAULT_WEIGHTS[normalize]. Bad weights or layers raise ValueError naming the parameter.

    pixel_terms: more terms on the image, added to L with their weights. grams: style_grams() of
    each style image, when the caller has them already (then `styles` may be None).
    content_features: {layer: (1, C, h, w)}, the content image's activations at the content layers,
    when the caller has them already (tiled.tiled_features: the content image is then not run
    through the net here). style_masks: one (H, W) array of weights ≥ 0 per style image, on the
    content's grid (spatial control, see the module docstring; style_blend must then be None).
    """

    def __init__(
        self,
        net,
        content,
        styles,
        options: ObjectiveOptions | None = None,
        *,
        grams: Sequence[dict] | None = None,
        content_features: dict | None = None,
        style_masks: Sequence | None = None,
        pixel_terms: Sequence[PixelTerm] = (),
        **keywords,
    ):
        self.options = replace(options or ObjectiveOptions(), **keywords)
        self.net = net
        styles = list(styles) if styles is not None else [None] * len(grams)
        self._check_options(self.options, styles)
        self.layers = list(dict.fromkeys(self.content_layers + self.style_layers))
        self.shape = tuple(content.shape)
        self.style_masks = self._check_masks(style_masks, len(styles), self.options.style_blend)
        self._arena = host.Arena()  # the big host arrays, from the targets on reused by each evaluation
        with host.engine_threads(), host.lending(self._arena):  # the targets' bits, like the evaluations', whatever BLAS's threads
            if grams is None:
                grams = [style_grams(net, style, self.style_layers) for style in styles]
            self._targets(net, content, grams, content_features)
        self.pixel_terms = list(pixel_terms)

    def _check_options(self, options: ObjectiveOptions, styles: list) -> None:
        """The options, checked and with their defaults, as attributes: normalize, content_layers,
        style_layers, content_weight, style_weight, tv_weight, style_blend (summing to 1),
        style_layer_weights, normalize_gradients."""
        self.normalize = check_normalize(options.normalize)
        self.content_layers = check_layers(options.content_layers)
        self.style_layers = check_layers(options.style_layers)
        defaults = DEFAULT_WEIGHTS[self.normalize]
        weights = (options.content_weight, options.style_weight, options.tv_weight)
        self.content_weight, self.style_weight, self.tv_weight = (
            check_weight(name, default if value is None else value)
            for name, value, default in zip(("content_weight", "style_weight", "tv_weight"), weights, defaults)
        )
        if self.style_layers and not styles:
            raise ValueError("style_layers are set but no style image was given")
        blend = check_weights("style_blend", options.style_blend, len(styles), "style images", nonzero_sum=True) or (1.0,) * max(1, len(styles))
        self.style_blend = [b / sum(blend) for b in blend]
        self.style_layer_weights = list(
            check_weights("style_layer_weights", options.style_layer_weights, len(self.style_layers), "style layers")
            or [1.0 / max(1, len(self.style_layers))] * len(self.style_layers)
        )
        self.normalize_gradients = bool(options.normalize_gradients)

    def _targets(self, net, content, grams, content_feats) -> None:
        """The content activations P_l (content_feats, or the content image run through the net), the
        style targets A_l at x's positions, and with style masks each region's target."""
        if content_feats is None:
            content_feats = net.extract(net.xp.asarray(content, dtype=net.dtype), self.layers)
        else:
            for layer in self.content_layers:
                if layer not in content_feats or tuple(content_feats[layer].shape[2:]) != self.layer_size(layer):
                    raise ValueError(f"content_features needs a {self.layer_size(layer)} activation at {layer}")
        # Copies of their own (xp.array): kept for the objective's life, they must not pin arena memory.
        self.targets = {layer: net.xp.array(content_feats[layer]) for layer in self.content_layers}
        positions = {layer: math.prod(self.layer_size(layer)) for layer in self.style_layers}
        self.grams = style_targets(grams, self.style_blend, positions)
        if self.style_masks is not None:
            self.regions = region_targets(self.style_masks, grams, self.style_layers)

    def _check_masks(self, masks, n_styles: int, style_blend):
        """The masks as (1, 1, H, W) arrays on the net's module, or ValueError."""
        if masks is None:
            return None
        masks = list(masks)
        check_mask_count(len(masks), n_styles, style_blend)
        xp, out = self.net.xp, []
        for k, m in enumerate(masks):
            m = xp.asarray(m, dtype=self.net.dtype)
            if m.shape != self.shape[2:]:
                raise ValueError(f"style mask {k + 1} is {tuple(m.shape)}, the content image {self.shape[2:]}")
            if not bool(xp.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) <= 0:
                raise ValueError(f"style mask {k + 1} must be finite weights ≥ 0, not all zero")
            out.append(m[None, None])
        return out

    def __getstate__(self) -> dict:
        """What pickling keeps (an objective sent to another process: a Dask worker evaluating tiles):
        the options and targets, not the net (the other process has its own: attached), the arena,
        or the pixel terms (functions of this process's; image_terms is the caller's part)."""
        state = dict(self.__dict__)
        state.update(net=None, _arena=None, pixel_terms=[])
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._arena = host.Arena()

    def attached(self, net) -> NSTObjective:
        """A copy of this objective (sharing its targets) evaluated by `net`, e.g. a worker's own
        VGG16 for an objective that arrived pickled; net must run on the targets' array module."""
        other = copy.copy(self)
        other.net, other._arena = net, host.Arena()
        return other

    def layer_size(self, layer: str) -> tuple[int, int]:
        """(h, w): `layer`'s grid for the content image's size (the positions its terms sum over)."""
        return spatial_size(layer, *self.shape[2:])

    # -- the terms ----------------------------------------------------------------------------

    def content_scale(self, size: int) -> float:
        """The content term's factor for a layer of `size` activations (C·h·w): 1 / size with
        normalize="size", else 1."""
        return 1.0 / size if self.normalize == "size" else 1.0

    def feature_terms(self, feats: dict) -> list[Term]:
        """The content and style terms of the activations in `feats` ({layer: (1, C, H, W)}).

        Only the terms whose layer is in `feats` are computed: gradcheck checks one layer's terms
        at a time, the study page each term's gradient alone.
        """
        terms = []
        for layer in self.content_layers:
            if layer in feats:
                value, df = content_loss(feats[layer], self.targets[layer])
                scale = self.content_scale(feats[layer].size)
                terms.append(Term("content", layer, self.content_weight, scale * value, scale * df))
        for layer, w in zip(self.style_layers, self.style_layer_weights):
            if layer in feats:
                f = feats[layer]  # the style term: unmasked, or the sum over the regions
                value, df = style_loss(f, self.grams[layer]) if self.style_masks is None else regions_style_loss(f, self.regions[layer])
                terms.append(Term("style", layer, self.style_weight * w, value, df))
        return terms

    def tv_term(self, x) -> Term:
        """Total variation of the image x: (1, 3, H, W)."""
        value, dx = tv_loss(x)
        scale = 1.0 / x.size if self.normalize == "size" else 1.0
        return Term("tv", None, self.tv_weight, scale * value, scale * dx)

    def terms(self, x) -> tuple[list[Term], list]:
        """Every term at x: (terms, the forward caches their gradients flow back through)."""
        if tuple(x.shape) != self.shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, the content image {self.shape}")
        feats, caches = self.net.forward(x, self.layers)
        return self.feature_terms(feats) + self.image_terms(x), caches

    def image_terms(self, x) -> list[Term]:
        """The terms on the image x: (1, 3, H, W) itself: TV (when γ > 0) and the pixel terms."""
        terms = [self.tv_term(x)] if self.tv_weight > 0 else []
        for pixel in self.pixel_terms:
            value, dx = pixel.fn(x)
            terms.append(Term(pixel.name, None, pixel.weight, value, dx))
        return terms

    # -- L and dL/dx --------------------------------------------------------------------------

    def evaluate(self, x) -> Evaluation:
        """L(x), dL/dx and the unweighted totals. x: (1, 3, H, W) shaped like the content image,
        on the net's array module.

        For its duration BLAS runs single-threaded under our own host threads; the caller's BLAS
        thread count is back afterwards (host.engine_threads)."""
        with host.engine_threads(), host.lending(self._arena):
            return self._evaluate(x)

    def _evaluate(self, x) -> Evaluation:
        terms, caches = self.terms(x)
        return self.evaluation_of(terms, self._input_gradient(x, terms, caches))

    def evaluation_of(self, terms: list[Term], grad) -> Evaluation:
        """The Evaluation of `terms` (their values: each layer's whole value, however it was summed)
        with the input gradient `grad`: L as the weighted sum of the totals."""
        totals = self._totals(terms)
        loss = self.content_weight * totals["content"] + self.style_weight * totals["style"] + self.tv_weight * totals["tv"]
        for pixel in self.pixel_terms:
            loss += pixel.weight * totals[pixel.name]
        return Evaluation(loss, grad, totals)

    def _input_gradient(self, x, terms: list[Term], caches: list):
        """dL/dx: the weighted gradients of the layer terms back through the net (using up `caches`),
        plus the weighted gradients of the terms on the image itself."""
        dfeats = {}
        for t in terms:
            if t.layer is not None:
                if self.normalize_gradients:  # neural-style's normalisation: each layer's gradient to L1 norm 1
                    t = t._replace(grad=t.grad / (abs(t.grad).sum() + L1_EPS))
                # Each term's gradient is a fresh array of this evaluation: weighted and summed in place.
                grad = t.grad
                grad *= t.weight
                if t.layer in dfeats:
                    dfeats[t.layer] += grad
                else:
                    dfeats[t.layer] = grad
        # A copy of its own (xp.array), not a view of the arena's memory: the caller keeps it for as
        # long as it likes, and the arena is whole again for the next evaluation.
        grad = self.net.xp.array(self.net.backward(dfeats, caches, consume=True)) if dfeats else x * 0
        for t in terms:
            if t.layer is None:
                grad += t.weight * t.grad
        return grad

    def _totals(self, terms: list[Term]) -> dict:
        """The unweighted value of each kind of term as a float; style's is Σ_l w_l E_l."""
        layer_weight = dict(zip(self.style_layers, self.style_layer_weights))
        totals = {"content": 0.0, "style": 0.0, "tv": 0.0, **{p.name: 0.0 for p in self.pixel_terms}}
        for t in terms:
            totals[t.name] = totals[t.name] + (layer_weight[t.layer] * t.value if t.name == "style" else t.value)
        return {name: float(value) for name, value in totals.items()}  # the only host syncs: a scalar per kind

    def loss_and_grad(self, x):
        """(L(x) as a float, dL/dx shaped like x)."""
        loss, grad, _ = self.evaluate(x)
        return loss, grad
