"""The Gatys et al. objective over the input pixels and its gradient, from our own backward passes.

    L(x) = α Σ_{l∈C} ½ Σ (F_l(x) − P_l)²  +  β Σ_{l∈S} w_l Σ (G_l(x) − A_l)² / (4 N_l² M_l²)  +  γ TV(x)
"""

from __future__ import annotations

import math
from typing import Sequence

from scratchnst import ops
from scratchnst.losses import content_loss, style_loss, tv_loss
from scratchnst.vgg import check_layers

CONTENT_LAYERS = ("relu4_1",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Default α, β, γ, tuned by eye for `stylize`'s default 384 px. The content term grows with the
# number of positions M while the style term does not (G ∝ M, divided by M²), so at larger sizes
# the same weights favour content: raise β with the size.
CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT = 1.0, 3e2, 1e-3


def _finite_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0 (got {value})")
    return value


def _normalised(name: str, weights: Sequence[float] | None, count: int) -> list[float]:
    """Weights that sum to 1 (equal when None); ValueError on a length mismatch or a zero sum."""
    if weights is None:
        return [1.0 / count] * count
    weights = [_finite_nonneg(name, w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"{name} has {len(weights)} values for {count} items")
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"{name} must not sum to 0")
    return [w / total for w in weights]


class NSTObjective:
    """L(x) and dL/dx for one content image and one or more style images.

    content: (1, 3, H, W), styles: list of (1, 3, H_k, W_k), all preprocessed; host or device arrays.
    Style images may have any size: a style Gram matrix is computed at the style's own size M^k and
    rescaled by M_l / M_l^k to the generated image's size, so that A_l means the same per-position
    statistics (with equal sizes this is exactly A_l = Σ_k b_k G_l(style_k)).
    """

    def __init__(
        self,
        net,
        content,
        styles,
        *,
        content_layers: Sequence[str] = CONTENT_LAYERS,
        style_layers: Sequence[str] = STYLE_LAYERS,
        content_weight: float = CONTENT_WEIGHT,
        style_weight: float = STYLE_WEIGHT,
        tv_weight: float = TV_WEIGHT,
        style_blend: Sequence[float] | None = None,
        style_layer_weights: Sequence[float] | None = None,
    ):
        xp = net.xp
        self.net = net
        self.content_layers = check_layers(content_layers)
        self.style_layers = check_layers(style_layers)
        self.content_weight = _finite_nonneg("content_weight", content_weight)
        self.style_weight = _finite_nonneg("style_weight", style_weight)
        self.tv_weight = _finite_nonneg("tv_weight", tv_weight)
        styles = list(styles)
        if self.style_layers and not styles:
            raise ValueError("style layers are set but no style image was given")
        self.style_blend = _normalised("style_blend", style_blend, max(1, len(styles)))
        if style_layer_weights is None:
            self.style_layer_weights = [1.0 / max(1, len(self.style_layers))] * len(self.style_layers)
        else:
            self.style_layer_weights = [_finite_nonneg("style_layer_weights", w) for w in style_layer_weights]
            if len(self.style_layer_weights) != len(self.style_layers):
                raise ValueError(
                    f"style_layer_weights has {len(self.style_layer_weights)} values for {len(self.style_layers)} style layers"
                )
        self.layers = list(dict.fromkeys(self.content_layers + self.style_layers))
        content = xp.asarray(content, dtype=net.dtype)
        self.shape = tuple(content.shape)
        content_feats = net.extract(content, self.layers)
        self.targets = {layer: content_feats[layer] for layer in self.content_layers}
        self.grams = {layer: 0 for layer in self.style_layers}
        for blend, style in zip(self.style_blend, styles):
            feats = net.extract(xp.asarray(style, dtype=net.dtype), self.style_layers)
            for layer, f in feats.items():
                m_x = content_feats[layer].shape[2] * content_feats[layer].shape[3]
                m_style = f.shape[2] * f.shape[3]
                g, _ = ops.gram_forward(f)
                self.grams[layer] = self.grams[layer] + (blend * m_x / m_style) * g
        self.last_terms: dict[str, float] = {}

    def loss_and_grad(self, x):
        """L(x) and dL/dx. x: (1, 3, H, W) shaped like the content image, on the net's array module.

        Returns (loss: float, grad: array shaped like x). Sets last_terms to the unweighted
        content, style (Σ_l w_l E_l) and tv values.
        """
        if tuple(x.shape) != self.shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, the content image {self.shape}")
        feats, caches = self.net.forward(x, self.layers)
        dfeats = {}
        content = style = 0.0
        for layer in self.content_layers:
            value, df = content_loss(feats[layer], self.targets[layer])
            content = content + value
            self._add(dfeats, layer, self.content_weight * df)
        for layer, w in zip(self.style_layers, self.style_layer_weights):
            value, df = style_loss(feats[layer], self.grams[layer])
            style = style + w * value
            self._add(dfeats, layer, (self.style_weight * w) * df)
        del feats
        grad = self.net.backward(dfeats, caches) if dfeats else x * 0
        tv = 0.0
        if self.tv_weight > 0:
            tv, dtv = tv_loss(x)
            grad += self.tv_weight * dtv
        # The only host syncs of an evaluation: three scalars.
        self.last_terms = {"content": float(content), "style": float(style), "tv": float(tv)}
        loss = (
            self.content_weight * self.last_terms["content"]
            + self.style_weight * self.last_terms["style"]
            + self.tv_weight * self.last_terms["tv"]
        )
        return loss, grad

    @staticmethod
    def _add(dfeats: dict, layer: str, grad) -> None:
        dfeats[layer] = grad if layer not in dfeats else dfeats[layer] + grad
