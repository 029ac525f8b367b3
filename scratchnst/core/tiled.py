"""The objective tile by tile, exactly: L(x) and dL/dx of an NSTObjective for a picture of any size,
with one tile's activations in memory at a time (besides the objective's own targets).

Every term is a sum over the positions of a layer, or a function of such sums: the content term is
per position, a Gram matrix is Σ_p F_p F_pᵀ (a region's Σ_p m_p F_p F_pᵀ / Σ_p m_p), TV and the pixel
terms are per pixel. So each position of each requested layer is given to exactly one tile, the one
whose *core* holds the position's index × the layer's stride (its *owned* positions), and each tile
runs through the net on a *crop*: its core and a halo that holds the receptive field of every
position it owns (FIELDS, walked from the layer table). The crop starts on a multiple of the deepest
layer's total stride (`alignment`), so every pooling window of the crop is one the whole image has
and the owned activations are the whole image's; only the halo's fringe differs (its zero padding
is not the image's), and no owned position reads it.

    pass 1   each tile forward; the Gram matrices of its owned positions (per style region, of
             F·√m), summed over the tiles
    then     each layer's style term and dE/dG from those sums (losses.gram_style_loss)
    (norms   with normalize_gradients: each term's gradient's L1 norm over the whole layer, summed
             over the tiles in one more pass)
    pass 2   each tile forward (or pass 1's, kept): its owned positions' content terms, and backward
             from their gradients (zero elsewhere); its input gradient, halo included, added into the
             whole one in tile order

TV and the pixel terms are computed on the whole image. Loss and gradient are the untiled ones up to
rounding: the same sums, added in another order.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Iterable, NamedTuple, Sequence

from scratchnst.core import host, ops
from scratchnst.core.losses import content_loss, gram_style_loss, masked_gram_style_loss
from scratchnst.core.objective import L1_EPS, Evaluation, NSTObjective, Term
from scratchnst.core.vgg import LAYERS, check_layers, spatial_size, window

# -- the geometry --------------------------------------------------------------------------------


class Field(NamedTuple):
    """Where a unit of a layer reads the input image, along either axis: unit i reads the pixels
    stride·i + lo .. stride·i + hi (the zero padding where that leaves the image)."""

    stride: int
    lo: int
    hi: int


def _fields() -> dict[str, Field]:
    """{layer: Field} for every layer of the table, walked from the input (pixel i reads itself)."""
    fields, stride, lo, hi = {}, 1, 0, 0
    for layer in LAYERS:
        kernel, step, pad = window(layer)
        # Unit i reads the units step·i − pad .. step·i − pad + kernel − 1 below it, and unit u below
        # reads the pixels stride·u + lo .. stride·u + hi.
        lo, hi, stride = lo - stride * pad, hi + stride * (kernel - 1 - pad), stride * step
        fields[layer.name] = Field(stride, lo, hi)
    return fields


FIELDS = _fields()  # relu1_1: (1, −1, 1); relu2_1: (2, −4, 5); relu5_1: (16, −58, 73), 132 pixels


def alignment(layers: Iterable[str]) -> int:
    """The pixels that cores and crops start on a multiple of: the total stride of the deepest of
    `layers` (16 up to pool4 and relu5_x, 32 with pool5; 1 for no layer), the step of its grid."""
    return max((FIELDS[name].stride for name in check_layers(layers)), default=1)


def check_core(core: int, align: int) -> int:
    """core as an int, or ValueError naming it unless it is a positive multiple of `align`."""
    if isinstance(core, bool) or not isinstance(core, numbers.Integral) or core <= 0 or core % align:
        raise ValueError(f"core must be a positive multiple of {align} pixels (the deepest layer's stride), not {core!r}")
    return int(core)


class Box(NamedTuple):
    """Rows top .. bottom − 1 and columns left .. right − 1 of a grid."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    @property
    def area(self) -> int:
        return math.prod(self.shape)

    def of(self, a):
        """The box's view of a: (..., H, W)."""
        return a[..., self.top : self.bottom, self.left : self.right]


class Tile(NamedTuple):
    """One tile of an image: the pixels whose positions it owns (core), and what it runs through the
    net (crop: the core and its halo, clipped to the image)."""

    core: Box
    crop: Box

    def owned(self, layer: str, height: int, width: int) -> tuple[Box, Box]:
        """The positions of `layer` this tile owns in a height × width image (index × the layer's
        stride in the core): (their box on the whole image's grid of the layer, on the crop's)."""
        stride = FIELDS[layer].stride
        h, w = spatial_size(layer, height, width)
        top, bottom = (min(-(-k // stride), h) for k in (self.core.top, self.core.bottom))
        left, right = (min(-(-k // stride), w) for k in (self.core.left, self.core.right))
        # The crop starts on a multiple of the stride: its grid is the image's, shifted.
        dy, dx = self.crop.top // stride, self.crop.left // stride
        return Box(top, left, bottom, right), Box(top - dy, left - dx, bottom - dy, right - dx)


def plan_tiles(height: int, width: int, core: int, layers: Iterable[str]) -> list[Tile]:
    """The tiles of a height × width image for a net run to `layers`, in row-major order.

    Cores: core × core squares from the origin, the last row and column what is left (any size);
    core must be a positive multiple of alignment(layers), else ValueError. Crops: the core widened
    to the receptive fields (FIELDS) of the positions it owns at each of `layers`, the start rounded
    down to a multiple of the alignment, clipped to the image.
    """
    layers = check_layers(layers)
    align = alignment(layers)
    core = check_core(core, align)
    if height < 1 or width < 1:
        raise ValueError(f"plan_tiles needs an image of at least one pixel, not {height} × {width}")
    fields = [FIELDS[name] for name in layers]
    rows, cols = (_spans(size, core, fields, align) for size in (height, width))
    return [Tile(Box(r0, c0, r1, c1), Box(t, l, b, r)) for (r0, r1), (t, b) in rows for (c0, c1), (l, r) in cols]


def _spans(size: int, core: int, fields: list[Field], align: int) -> list[tuple]:
    """[((core start, end), (crop start, end)), ...] along one axis of `size` pixels."""
    spans = []
    for start in range(0, size, core):
        end = min(start + core, size)
        # A layer's first owned unit is at `start` (a multiple of its stride), its last at the
        # stride's last multiple below `end`.
        lo = min((start + f.lo for f in fields), default=start)
        hi = max((f.stride * (-(-end // f.stride) - 1) + f.hi + 1 for f in fields), default=end)
        spans.append(((start, end), (max(0, lo // align * align), min(size, hi))))
    return spans


def halo_overhead(tiles: Sequence[Tile]) -> float:
    """Σ crop area / Σ core area: how many pixels the tiles run through the net per pixel of the image."""
    return sum(t.crop.area for t in tiles) / sum(t.core.area for t in tiles)


# -- one tile, and the targets tile by tile ------------------------------------------------------


def tile_forward(net, x, tile: Tile, layers: Sequence[str]) -> tuple[dict, list]:
    """The crop of x: (N, 3, H, W) through the net: ({layer: the owned activations (N, C, h, w), a
    view of the crop's}, the crop's caches for net.backward)."""
    height, width = x.shape[2:]
    feats, caches = net.forward(net.xp.ascontiguousarray(tile.crop.of(x)), layers)
    return {layer: tile.owned(layer, height, width)[1].of(f) for layer, f in feats.items()}, caches


def tiled_features(net, image, layers: Sequence[str], core: int) -> dict:
    """net.extract(image, layers) tile by tile: {layer: (N, C, h, w)}, each position from the tile
    that owns it. image: (N, 3, H, W), preprocessed (NSTObjective's content_features)."""
    x = net.xp.asarray(image, dtype=net.dtype)
    height, width = x.shape[2:]
    out = {}
    for tile in plan_tiles(height, width, core, layers):
        for layer, f in tile_forward(net, x, tile, layers)[0].items():
            if layer not in out:
                h, w = spatial_size(layer, height, width)
                out[layer] = net.xp.empty((x.shape[0], f.shape[1], h, w), dtype=f.dtype)
            tile.owned(layer, height, width)[0].of(out[layer])[...] = f
    return out


def tiled_style_grams(net, style, layers: Sequence[str], core: int) -> dict:
    """objective.style_grams(net, style, layers) tile by tile: {layer: (G (N, C, C), M)}, G the sum of
    the tiles' Gram matrices of their owned positions, M the layer's positions."""
    x = net.xp.asarray(style, dtype=net.dtype)
    height, width = x.shape[2:]
    sums = {}
    for tile in plan_tiles(height, width, core, layers):
        for layer, f in tile_forward(net, x, tile, layers)[0].items():
            sums[layer] = sums.get(layer, 0) + ops.gram_forward(f)[0]
    return {layer: (g, math.prod(spatial_size(layer, height, width))) for layer, g in sums.items()}


# -- the objective -------------------------------------------------------------------------------


class TiledObjective:
    """An NSTObjective evaluated tile by tile: evaluate(x) is objective.evaluate(x) up to rounding
    (loss, gradient and totals), holding one tile's activations at a time.

    core: the side of a tile's core in pixels, a positive multiple of alignment(objective.layers)
    (ValueError otherwise). keep_forward: keep each tile's forward pass (caches and owned
    activations) from pass 1 to pass 2 instead of running it again, for every tile's activations in
    memory at once (it only matters with style layers: without, there is no pass 1). on_tile(done,
    total): called after each tile of each pass, `done` of the evaluation's `total` (the tiles times
    the passes), for a progress bar.

    Each pass is one step per tile (TileSteps), whose results are added up here in tile order.
    spread: None runs the steps here; else an object whose tiles(tiled, x) is a context manager
    giving run(step, args, reduce), which runs `step(x, t, *args)` of every tile t elsewhere
    (TileSteps.run, on TileSteps of the same objective and core) and calls reduce(t, result) in tile
    order (app/picture/spread.py: the tiles as Dask tasks). The sums are then the same, in the same
    order: the same bytes.
    """

    def __init__(self, objective: NSTObjective, core: int, *, keep_forward: bool = False,
                 on_tile: Callable[[int, int], object] | None = None, spread=None):
        if keep_forward and spread is not None:
            raise ValueError("keep_forward keeps the forward passes in this process; with spread the tiles run elsewhere")
        self.steps = TileSteps(objective, core)
        self.objective, self.tiles, self.core = objective, self.steps.tiles, self.steps.core
        self.keep_forward, self.on_tile, self.spread = bool(keep_forward), on_tile, spread

    @property
    def passes(self) -> int:
        """Passes over the tiles per evaluation: pass 2, pass 1 with style layers, and the norms'."""
        obj = self.objective
        return 1 + bool(obj.style_layers) + bool(obj.normalize_gradients)

    def evaluate(self, x) -> Evaluation:
        """L(x), dL/dx and the unweighted totals, as objective.evaluate(x). x: (1, 3, H, W)."""
        obj = self.objective
        if tuple(x.shape) != obj.shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, the content image {obj.shape}")
        with host.engine_threads(), host.lending(self.steps.arena), self._each_tile(x) as run:
            style = self._style_terms(self._gram_sums(run))
            norms = self._norms(run, style) if obj.normalize_gradients else None
            grad, terms = self._gradient(x, run, style, norms)
            image_terms = obj.image_terms(x)
            for t in image_terms:
                grad += t.weight * t.grad
            return obj.evaluation_of(terms + image_terms, grad)

    def loss_and_grad(self, x):
        """(L(x) as a float, dL/dx shaped like x)."""
        loss, grad, _ = self.evaluate(x)
        return loss, grad

    # -- the passes: each a step per tile, added up in tile order ------------------------------

    @contextlib.contextmanager
    def _each_tile(self, x):
        """run(step, args, reduce) for this evaluation: each tile's step, here or spread, reduced
        in tile order, each tile told to on_tile."""
        done, total = [0], self.passes * len(self.tiles)

        def ticking(reduce: Callable) -> Callable:
            def reduced(t: int, result) -> None:
                reduce(t, result)
                done[0] += 1
                if self.on_tile is not None:
                    self.on_tile(done[0], total)
            return reduced

        if self.spread is not None:
            with self.spread.tiles(self, x) as run:
                yield lambda step, args, reduce: run(step, args, ticking(reduce))
            return

        def here(step: str, args: tuple, reduce: Callable) -> None:
            reduce = ticking(reduce)
            for t in range(len(self.tiles)):
                # The arena grows to a tile's arrays after the first tile, not the first evaluation;
                # not with keep_forward, whose tiles' arrays stay lent (each renew would pin a region).
                with host.lending(self.steps.arena, renew=not self.keep_forward):
                    reduce(t, getattr(self.steps, step)(x, t, *args))

        self.steps.kept = [None] * len(self.tiles) if self.keep_forward else None
        try:
            yield here
        finally:
            self.steps.kept = None

    def _gram_sums(self, run) -> dict:
        """Pass 1: {layer: [Σ over the tiles of each piece's Gram matrix (1, C, C)]}. Nothing to do
        without style layers."""
        sums = {}
        if not self.objective.style_layers:
            return sums

        def add(t: int, grams: dict) -> None:
            for layer, gs in grams.items():
                sums[layer] = [s + g for s, g in zip(sums[layer], gs)] if layer in sums else gs

        run("tile_grams", (), add)
        return sums

    def _style_terms(self, sums: dict) -> dict:
        """{layer: [(value, dE/dG) per piece]}: each style layer's term from the whole layer's sums."""
        obj, out = self.objective, {}
        for layer, grams in sums.items():
            if obj.style_masks is None:
                out[layer] = [gram_style_loss(grams[0], obj.grams[layer], math.prod(obj.layer_size(layer)))]
            else:
                out[layer] = [masked_gram_style_loss(g, m.sum(), a_hat) for g, (m, a_hat) in zip(grams, obj.regions[layer])]
        return out

    def _norms(self, run, style: dict) -> dict:
        """{(name, layer): Σ |d term / d activation|} over the whole layer (normalize_gradients' L1
        norms): one more pass over the tiles."""
        norms = {}

        def add(t: int, tile_norms: dict) -> None:
            for key, n in tile_norms.items():
                norms[key] = norms.get(key, 0) + n

        run("tile_norms", (style,), add)
        return norms

    def _gradient(self, x, run, style: dict, norms: dict | None) -> tuple:
        """Pass 2: (dL/dx of the content and style terms, those terms with their whole values)."""
        obj = self.objective
        grad, content = obj.net.xp.zeros(x.shape, dtype=x.dtype), {}

        def add(t: int, result: tuple) -> None:
            dx, values = result
            if dx is not None:
                self.tiles[t].crop.of(grad)[...] += dx
            for layer, value in values.items():
                content[layer] = content.get(layer, 0) + value

        run("tile_gradient", (style, norms), add)
        terms = [Term("content", layer, obj.content_weight, content.get(layer, 0), None) for layer in obj.content_layers]
        terms += [Term("style", layer, obj.style_weight * w, sum(v for v, _ in style.get(layer, ())), None)
                  for layer, w in zip(obj.style_layers, obj.style_layer_weights)]
        return grad, terms


class TileSteps:
    """One tile's part of each pass of a tiled evaluation of `objective` in cores of `core` px:
    tile_grams (pass 1), tile_norms (normalize_gradients' pass), tile_gradient (pass 2), each
    (x, t, ...) for tile t of `tiles`. TiledObjective runs them here and adds their results in tile
    order; a worker of a spread evaluation runs them through run().

    kept: None, or during an evaluation with keep_forward a list with each tile's pass-1 forward
    (owned activations, caches), used by the later passes. arena: the big host arrays, reused from
    tile to tile and evaluation to evaluation (as NSTObjective's).
    """

    NAMES = ("tile_grams", "tile_norms", "tile_gradient")

    def __init__(self, objective: NSTObjective, core: int):
        self.objective = objective
        self.tiles = plan_tiles(*objective.shape[2:], core, objective.layers)
        self.core = int(core)
        self.kept: list | None = None
        self.arena = host.Arena()

    def run(self, step: str, x, t: int, *args):
        """One tile's step as another process runs it for a spread evaluation: getattr(self, step)(x,
        t, *args) under the engine's threads and this arena, its arrays copied out of the arena (they
        outlive the next tile's)."""
        if step not in self.NAMES:
            raise ValueError(f"step must be one of {', '.join(self.NAMES)}, not {step!r}")
        with host.engine_threads(), host.lending(self.arena):
            return _copied(getattr(self, step)(x, t, *args), self.objective.net.xp)

    def tile_grams(self, x, t: int) -> dict:
        """Pass 1 of tile t: {layer: [the Gram matrix (1, C, C) of each piece of its owned positions]}
        for the style layers where it owns some (a piece per style region with style masks)."""
        obj, tile = self.objective, self.tiles[t]
        owned, caches = tile_forward(obj.net, x, tile, obj.layers)
        if self.kept is not None:
            self.kept[t] = (owned, caches)
        grams = {}
        for layer in obj.style_layers:
            whole, _ = tile.owned(layer, *obj.shape[2:])
            if whole.area:
                grams[layer] = [ops.gram_forward(piece)[0] for piece, _ in self._pieces(layer, whole, owned[layer])]
        return grams

    def tile_norms(self, x, t: int, style: dict) -> dict:
        """Tile t's part of normalize_gradients' norms: {(name, layer): Σ |d term / d activation|}
        over its owned positions. style: _style_terms' {layer: [(value, dE/dG)]}."""
        tile, (owned, _) = self.tiles[t], self._forward(x, t)
        return {(term.name, term.layer): abs(term.grad).sum() for term in self._tile_terms(tile, owned, style)}

    def tile_gradient(self, x, t: int, style: dict, norms: dict | None) -> tuple:
        """Pass 2 of tile t: (its input gradient on the crop (1, 3, h, w), halo included, or None
        where it owns no position of a layer with a term; {layer: its part of the content term}).
        norms: the whole layers' (None without normalize_gradients)."""
        tile, (owned, caches) = self.tiles[t], self._forward(x, t, last=True)
        values = {}
        dfeats = self._dfeats(tile, self._tile_terms(tile, owned, style), norms, values)
        return (self.objective.net.backward(dfeats, caches, consume=True) if dfeats else None), values

    def _forward(self, x, t: int, *, last: bool = False) -> tuple[dict, list]:
        """Tile t's (owned activations, caches): pass 1's when kept (let go of on the `last` pass),
        else a new forward."""
        if self.kept is not None and self.kept[t] is not None:
            kept = self.kept[t]
            if last:
                self.kept[t] = None
            return kept
        return tile_forward(self.objective.net, x, self.tiles[t], self.objective.layers)

    def _pieces(self, layer: str, whole: Box, f) -> list[tuple]:
        """What `layer`'s style term sums Gram matrices of, on owned positions f: (1, C, h, w) at
        `whole` on the layer's grid: [(F, None)], or with style masks [(F·√m, √m)] per region."""
        obj = self.objective
        if obj.style_masks is None:
            return [(f, None)]
        roots = [obj.net.xp.sqrt(whole.of(m)) for m, _ in obj.regions[layer]]
        return [(f * root, root) for root in roots]

    def _tile_terms(self, tile: Tile, owned: dict, style: dict) -> list[Term]:
        """One tile's content and style terms: Term(name, layer, weight, value, grad) with the grad
        (1, C, h, w) on its owned positions, the value the tile's part of the content term (None for
        style, whose value is the whole layer's). Layers where the tile owns nothing are left out."""
        obj, terms = self.objective, []
        for layer in obj.content_layers:
            whole, _ = tile.owned(layer, *obj.shape[2:])
            if whole.area:
                value, df = content_loss(owned[layer], whole.of(obj.targets[layer]))
                scale = obj.content_scale(obj.targets[layer].size)
                terms.append(Term("content", layer, obj.content_weight, scale * value, scale * df))
        for layer, w in zip(obj.style_layers, obj.style_layer_weights):
            whole, _ = tile.owned(layer, *obj.shape[2:])
            if whole.area:
                df = owned[layer] * 0
                for (_, dg), (piece, root) in zip(style[layer], self._pieces(layer, whole, owned[layer])):
                    d = ops.gram_backward(dg, piece)
                    df += d if root is None else d * root
                terms.append(Term("style", layer, obj.style_weight * w, None, df))
        return terms

    def _dfeats(self, tile: Tile, terms: list[Term], norms: dict | None, content: dict) -> dict:
        """{layer: dL/d(activation) on the crop's grid (1, C, h, w)}: one tile's weighted term
        gradients at its owned positions, zero elsewhere (normalised by `norms` when given). Adds the
        tile's content values into `content` ({layer: value})."""
        xp, dfeats = self.objective.net.xp, {}
        for t in terms:
            if t.value is not None:
                content[t.layer] = content.get(t.layer, 0) + t.value
            g = t.grad if norms is None else t.grad / (norms[t.name, t.layer] + L1_EPS)
            g *= t.weight  # a fresh array of this tile's
            if t.layer not in dfeats:
                grid = spatial_size(t.layer, *tile.crop.shape)
                dfeats[t.layer] = host.zeros(xp, (*g.shape[:2], *grid), g.dtype)
            tile.owned(t.layer, *self.objective.shape[2:])[1].of(dfeats[t.layer])[...] += g
        return dfeats


def _copied(value, xp):
    """value with each array in it (in dicts, lists and tuples) a copy of its own."""
    if isinstance(value, dict):
        return {k: _copied(v, xp) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v, xp) for v in value)
    return xp.array(value) if isinstance(value, xp.ndarray) else value
