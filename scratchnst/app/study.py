"""Look inside one evaluation of the objective: pictures of what the network and each loss term see.

`python -m scratchnst inspect CONTENT STYLE -o DIR` writes PNGs under DIR and a static DIR/index.html
that shows them (open it from disk, no server):
  features/  the strongest channels of chosen layers, for the content image;
  gram/      each style layer's Gram matrix per position, G / M, for the style image and the current image;
  grads/     −dL_term/dx for each loss term alone (content; each style layer; TV): the direction that
             term pushes the pixels, red = brighter, blue = darker;
  evolution/ with --iterations N, the image and those pushes at a few iterations of L-BFGS (strips and a GIF).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from scratchnst.app.files import images as im
from scratchnst.app.files.atomic import atomic_open
from scratchnst.app.files.weights import load_vgg16
from scratchnst.app.picture.settings import NOISE_STD, Settings, int_option, layers_option
from scratchnst.core.backend import to_host
from scratchnst.core.objective import STYLE_LAYERS, NSTObjective
from scratchnst.core.ops import gram_forward
from scratchnst.core.optim import LBFGS
from scratchnst.core.preprocess import MIN_SIDE, deprocess, preprocess
from scratchnst.errors import ScratchnstError

DEFAULTS = Settings()
SIZE = 128  # the long side of the pictures (inspect's --size)
FEATURE_LAYERS = STYLE_LAYERS  # the layers whose features are shown: the style layers
CHANNELS = 16  # strongest channels shown per layer, as a 4×4 grid
MIN_TILE = 64  # feature tiles and Gram heatmaps are enlarged (nearest neighbour) to at least this
SNAPSHOTS = 6  # frames in the --iterations strips
# Anchors of the sequential map for Gram matrices (dark blue → teal → yellow), interpolated linearly.
_SEQUENTIAL = np.array([[13, 8, 135], [84, 2, 163], [156, 23, 158], [205, 74, 113], [237, 121, 83], [252, 180, 52], [240, 249, 33]], float)


# -- colour maps ------------------------------------------------------------------------------------


def diverging(values: np.ndarray, scale: float | None = None, percentile: float = 99.0) -> np.ndarray:
    """Signed (H, W) values → uint8 RGB (H, W, 3): blue < 0, white = 0, red > 0, symmetric around 0.

    scale: the |value| drawn at full colour (default: the `percentile` of |values|, so a few extreme
    pixels do not wash the rest out); larger magnitudes are clipped.
    """
    v = np.asarray(values, dtype=np.float64)
    if scale is None:
        scale = float(np.percentile(np.abs(v), percentile)) if v.size else 0.0
    t = np.clip(v / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(v)
    white = np.array([255.0, 255.0, 255.0])
    red, blue = np.array([178.0, 24.0, 43.0]), np.array([33.0, 102.0, 172.0])
    a = np.abs(t)[..., None]
    rgb = white * (1 - a) + np.where(t[..., None] >= 0, red, blue) * a
    return np.rint(rgb).astype(np.uint8)


def sequential(values: np.ndarray, scale: float) -> np.ndarray:
    """Non-negative (H, W) values → uint8 RGB on a dark-to-bright map; `scale` and above are brightest."""
    t = np.clip(np.asarray(values, dtype=np.float64) / scale, 0.0, 1.0) if scale > 0 else np.zeros(np.shape(values))
    pos = t * (len(_SEQUENTIAL) - 1)
    lo = np.minimum(pos.astype(int), len(_SEQUENTIAL) - 2)
    frac = (pos - lo)[..., None]
    return np.rint(_SEQUENTIAL[lo] * (1 - frac) + _SEQUENTIAL[lo + 1] * frac).astype(np.uint8)


def _enlarge(rgb: np.ndarray, min_side: int = MIN_TILE) -> np.ndarray:
    """Repeat pixels (nearest neighbour) until the short side is at least `min_side`."""
    k = max(1, -(-min_side // min(rgb.shape[:2])))
    return rgb.repeat(k, axis=0).repeat(k, axis=1)


# -- pictures of one evaluation ---------------------------------------------------------------------


def feature_grid(f, count: int = CHANNELS) -> np.ndarray:
    """f: (1, C, H, W) activations → uint8 RGB grid of the `count` channels with the largest mean.

    Each tile is scaled by its own maximum (ReLU outputs are ≥ 0), strongest first, row by row, with
    a 2-pixel white gutter.
    """
    f = to_host(f)[0].astype(np.float64)
    order = np.argsort(-f.mean(axis=(1, 2)), kind="stable")[: min(count, f.shape[0])]
    cols = int(np.ceil(np.sqrt(len(order))))
    rows = -(-len(order) // cols)
    tiles = []
    for c in order:
        top = f[c].max()
        grey = np.rint(255 * np.clip(f[c] / top, 0, 1)) if top > 0 else np.zeros(f[c].shape)
        tiles.append(_enlarge(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)))
    th, tw = tiles[0].shape[:2]
    grid = np.full((rows * (th + 2) - 2, cols * (tw + 2) - 2, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * (th + 2) : r * (th + 2) + th, c * (tw + 2) : c * (tw + 2) + tw] = tile
    return grid


def gram_per_position(f) -> np.ndarray:
    """f: (1, C, H, W) → G / M as a host (C, C) array, M = H·W, comparable across image sizes."""
    g, _ = gram_forward(f)
    return to_host(g)[0].astype(np.float64) / (f.shape[2] * f.shape[3])


def gradient_picture(grad, scale: float | None = None) -> np.ndarray:
    """dL/dx: (1, 3, H, W) → uint8 RGB of the push −Σ_channels dL/dx (red: brighter, blue: darker)."""
    return diverging(-to_host(grad)[0].astype(np.float64).sum(axis=0), scale)


def term_gradients(obj: NSTObjective, x) -> dict[str, object]:
    """{term: weighted dL_term/dx} for every loss term alone: "content", "style <layer>" each, "tv".

    One forward (NSTObjective.terms), then one backward per term (so each is exactly what that term
    contributes to the objective's gradient: their sum is NSTObjective.loss_and_grad(x)[1]).
    """
    return gradients_of(obj, *obj.terms(x))


def gradients_of(obj: NSTObjective, terms: list, caches: list) -> dict[str, object]:
    """term_gradients from one forward's (terms, caches) (NSTObjective.terms), for a caller that
    also wants the terms' values (loss_breakdown)."""
    grads = {}
    content = {}
    for t in terms:
        if t.name == "content":
            content[t.layer] = t.weight * t.grad if t.layer not in content else content[t.layer] + t.weight * t.grad
        elif t.name == "style":
            grads[f"style {t.layer}"] = obj.net.backward({t.layer: t.weight * t.grad}, caches)
        else:
            grads["tv"] = t.weight * t.grad
    if content:
        grads = {"content": obj.net.backward(content, caches), **grads}
    return grads


def loss_breakdown(terms: list) -> list[dict]:
    """The per-layer loss: one row per term (NSTObjective.terms), {"term", "layer", "weight",
    "value" (unweighted), "weighted", "share" (of the weighted total)}, as floats."""
    rows = [{"term": t.name, "layer": t.layer, "weight": float(t.weight), "value": float(t.value),
             "weighted": float(t.weight * t.value)} for t in terms]
    total = sum(r["weighted"] for r in rows)
    for r in rows:
        r["share"] = r["weighted"] / total if total else 0.0
    return rows


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Page:
    """What index.html shows: sections of (title, text, [(src, caption)])."""

    title: str
    sections: list = field(default_factory=list)


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def _save(out: Path, rel: str, rgb) -> str:
    im.save_image(rgb, out / rel)
    return rel


def _save_gif(out: Path, rel: str, frames: list[np.ndarray], ms: int = 600) -> str:
    """An animated GIF, written atomically like every other picture."""
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pics = [Image.fromarray(f) for f in frames]
    with atomic_open(path) as fh:
        pics[0].save(fh, format="GIF", save_all=True, append_images=pics[1:], duration=ms, loop=0)
    return rel


def _strip(frames: list[np.ndarray]) -> np.ndarray:
    """Frames side by side with a 4-pixel white gutter."""
    h = max(f.shape[0] for f in frames)
    parts = []
    for f in frames:
        parts += [np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0)), constant_values=255), np.full((h, 4, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def inspect(
    content=None,
    style=None,
    out_dir: str | os.PathLike = "inspect",
    *,
    size: int = SIZE,
    layers=FEATURE_LAYERS,
    iterations: int = 0,
    seed: int = 0,
    net=None,
) -> Path:
    """Write the pictures and DIR/index.html for CONTENT and STYLE paths (None: the embedded pair).

    The "current image" is seeded noise (what stylize starts from) or, with `iterations`, the L-BFGS
    iterate after them. `net`: a loaded VGG16 (default: load_vgg16()). Returns the index.html path.
    """
    layers, out = check_options(size, iterations, layers, out_dir, seed)
    content_img, style_img = (im.fit_long_side(im.open_image(src, what)[0], size) for src, what in ((content, "content"), (style, "style")))
    net = net if net is not None else load_vgg16(dtype=DEFAULTS.dtype)
    xp, dtype = net.xp, str(net.dtype)
    c = preprocess(content_img, dtype=dtype, xp=xp)
    s = preprocess(style_img, dtype=dtype, xp=xp)
    obj = NSTObjective(net, c, [s], normalize=DEFAULTS.normalize)
    x0 = xp.asarray(np.random.default_rng(seed).normal(0.0, NOISE_STD, c.shape).astype(dtype))
    page = Page(f"scratchnst inspect: {size} px, seed {seed}")
    figs = [(_save(out, "content.png", content_img), "content image"), (_save(out, "style.png", style_img), "style image")]
    page.sections.append(("Inputs", "The two images, resized so the long side is the working size.", figs))
    page.sections.append(_features_section(out, net.extract(c, layers)))
    frames_at, evolution, done = _evolve(obj, x0, iterations)
    x = evolution["x"]
    page.sections.append(_gram_section(out, obj, net.extract(s, obj.style_layers), net.extract(x, obj.style_layers)))
    page.sections.append(_gradients_section(out, evolution, done if iterations else None))
    if iterations:
        page.sections.append(_evolution_section(out, evolution, frames_at))
    index = out / "index.html"
    with atomic_open(index) as fh:
        fh.write(render_html(page).encode("utf-8"))
    return index


def check_options(size: int, iterations: int, layers, out_dir, seed: int = 0) -> tuple[tuple[str, ...], Path]:
    """(layers, output folder), or ScratchnstError for a bad option (before anything heavy); the
    checks are stylize's (settings.*_option)."""
    int_option("size", size, minimum=MIN_SIDE)
    int_option("iterations", iterations, minimum=0)
    int_option("seed", seed, minimum=0)
    layers = layers_option("layers", layers)
    if not layers:
        raise ScratchnstError("--layers needs at least one layer name")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ScratchnstError(f"{out}: exists and is not a directory")
    return layers, out


def _evolve(obj: NSTObjective, x, iterations: int):
    """(the iterations shown, {"image": frames, term: gradients per frame, "x": last x}, iterations done):
    L-BFGS from x, stopping at SNAPSHOTS evenly spaced iterations to take pictures."""
    evolution = {"image": []}
    frames_at = sorted({round(i * iterations / (SNAPSHOTS - 1)) for i in range(SNAPSHOTS)}) if iterations else [0]
    opt = LBFGS(x, obj.loss_and_grad, history=DEFAULTS.lbfgs_history) if iterations else None
    done = 0
    for at in frames_at:
        while opt is not None and done < at and not opt.converged:
            opt.step()
            done += 1
        x = opt.x if opt is not None else x
        evolution["image"].append(deprocess(x))
        for term, g in term_gradients(obj, x).items():
            evolution.setdefault(term, []).append(g)
    evolution["x"] = x
    return frames_at, evolution, done


def _terms_of(evolution: dict) -> dict:
    return {term: frames for term, frames in evolution.items() if term not in ("image", "x")}


def _features_section(out: Path, feats: dict):
    figs = [(_save(out, f"features/{l}.png", feature_grid(f)), f"{l}: {f.shape[1]} channels, {f.shape[2]}×{f.shape[3]}") for l, f in feats.items()]
    return (
        "Feature maps (content image)",
        f"The {CHANNELS} channels with the largest mean activation at each layer, strongest first; each tile "
        "scaled to its own maximum (white). Deeper layers are coarser and respond to larger structures.",
        figs,
    )


def _gram_section(out: Path, obj: NSTObjective, style_feats: dict, image_feats: dict):
    figs = []
    for l in obj.style_layers:
        target = gram_per_position(style_feats[l])
        current = gram_per_position(image_feats[l])
        scale = float(np.percentile(np.abs(target), 99.5)) or 1.0  # one scale per layer: comparable maps
        figs.append((_save(out, f"gram/{l}_style.png", _enlarge(sequential(target, scale), 256)), f"{l}, style image: G/M, {target.shape[0]}×{target.shape[0]}"))
        figs.append((_save(out, f"gram/{l}_image.png", _enlarge(sequential(current, scale), 256)), f"{l}, current image (same colour scale)"))
    return (
        "Gram matrices",
        "Entry (i, j) is Σ over positions of channel i × channel j, divided by the number of positions: which "
        "features fire together, with where forgotten. The style loss pulls the current image's matrix (right) "
        "toward the style's (left); both use the style's 99.5th percentile as full brightness.",
        figs,
    )


def _gradients_section(out: Path, evolution: dict, done: int | None):
    caption = f"current image (after {done} iterations)" if done is not None else "current image (the noise start)"
    figs = [(_save(out, "current.png", evolution["image"][-1]), caption)]
    for term, frames in _terms_of(evolution).items():
        g = frames[-1]
        top = float(np.percentile(np.abs(to_host(g).sum(axis=1)), 99.0))
        figs.append((_save(out, f"grads/{_slug(term)}.png", gradient_picture(g)), f"{term}: −dL/dx, 99th percentile |push| = {top:.3g}"))
    return (
        "What each loss term asks of the pixels",
        "−dL/dx of each weighted term alone, summed over the colour channels: the way a small gradient step "
        "for that term would move each pixel (red: brighter, blue: darker, white: leave it). Each picture is "
        "scaled by its own 99th percentile of |push|; the caption gives it, so strengths compare across terms. "
        "The terms add up to the objective's gradient.",
        figs,
    )


def _evolution_section(out: Path, evolution: dict, frames_at: list[int]):
    figs = [(_save(out, "evolution/image_strip.png", _strip(evolution["image"])), f"the image at iterations {', '.join(map(str, frames_at))}")]
    figs.append((_save_gif(out, "evolution/image.gif", evolution["image"]), "the same, animated"))
    for term, frames in _terms_of(evolution).items():
        scale = float(np.percentile(np.abs(to_host(frames[0]).sum(axis=1)), 99.0))  # the first frame's scale, kept: growth and decay show
        strip = _strip([gradient_picture(g, scale) for g in frames])
        figs.append((_save(out, f"evolution/{_slug(term)}_strip.png", strip), f"{term}: −dL/dx at the same iterations, one colour scale (the first frame's)"))
    return (
        "Evolution",
        f"L-BFGS from the noise start; frames at iterations {', '.join(map(str, frames_at))}. A term that is "
        "being satisfied fades toward white.",
        figs,
    )


# -- the page ---------------------------------------------------------------------------------------

_SCRIPT = """
window.addEventListener("load", function () {
  var broken = [];
  Array.prototype.forEach.call(document.images, function (img) {
    if (!(img.complete && img.naturalWidth > 0)) broken.push(img.getAttribute("src"));
  });
  document.body.dataset.images = String(document.images.length);
  document.body.dataset.imagesOk = broken.length ? "false" : "true";
  document.body.dataset.broken = broken.join(" ");
});
"""
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 80em; color: #222; }
section { margin-bottom: 2em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 100%; }
img { image-rendering: pixelated; min-width: 160px; max-width: min(100%, 420px); border: 1px solid #ccc; }
figcaption { font-size: 0.85em; max-width: 30em; }
"""


def render_html(page: Page) -> str:
    """A self-contained static page: inline CSS and a small script that records, on load, whether
    every picture decoded (body data-images-ok), so a headless browser can check it."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(page.title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>{html.escape(page.title)}</h1>",
    ]
    for title, text, figs in page.sections:
        parts.append(f"<section><h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>")
        for src, caption in figs:
            parts.append(
                f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
