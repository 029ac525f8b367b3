"""VGG-16's convolutional part run by our own layers: forward to the deepest layer asked for, backward
from there to the input pixels.

Layers, in order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ..., conv5_3, relu5_3, pool5.
Convs are 3×3, stride 1, pad 1; pools 2×2, stride 2 (max, or average with pooling="avg").
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from scratchnst import ops
from scratchnst.backend import check_dtype, get_array_module, get_backend

BLOCK_DEPTHS = (2, 2, 3, 3, 3)
POOLINGS = ("max", "avg")


def _layer_table() -> list[tuple[str, str, int]]:
    """[(name, kind, conv index)] for the 31 layers; conv index is -1 for relu/pool."""
    table, conv = [], 0
    for block, depth in enumerate(BLOCK_DEPTHS, start=1):
        for i in range(1, depth + 1):
            table.append((f"conv{block}_{i}", "conv", conv))
            table.append((f"relu{block}_{i}", "relu", -1))
            conv += 1
        table.append((f"pool{block}", "pool", -1))
    return table


LAYERS = _layer_table()
LAYER_NAMES = tuple(name for name, _, _ in LAYERS)


class LayerCache(NamedTuple):
    name: str
    kind: str
    cache: object


def check_layers(names: Iterable[str]) -> list[str]:
    """The names as a list, or ValueError naming the first unknown one."""
    names = list(names)
    for name in names:
        if name not in LAYER_NAMES:
            raise ValueError(f"unknown layer {name!r} (layers are conv1_1, relu1_1, ..., relu5_3, pool5)")
    return names


class VGG16:
    """The 13 frozen conv layers of VGG-16 with explicit forward and backward passes.

    params: 13 (kernel (F, C, 3, 3), bias (F,)) pairs, OIHW, all on one array module and dtype.
    """

    layer_names = LAYER_NAMES

    def __init__(self, params: list[tuple[object, object]], pooling: str = "max"):
        if len(params) != sum(BLOCK_DEPTHS):
            raise ValueError(f"VGG16 needs {sum(BLOCK_DEPTHS)} conv layers, got {len(params)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} (choose from {', '.join(POOLINGS)})")
        self.params = params
        self.pooling = pooling
        if pooling == "max":
            self._pool, self._unpool = ops.maxpool2d_forward, ops.maxpool2d_backward
        else:
            self._pool, self._unpool = ops.avgpool2d_forward, ops.avgpool2d_backward

    @property
    def xp(self):
        return get_array_module(self.params[0][0])

    @property
    def dtype(self):
        return self.params[0][0].dtype

    def forward(self, x, layers: Iterable[str]):
        """Run x: (N, 3, H, W) up to the deepest of `layers`.

        Returns (feats, caches): feats maps each requested name to its activation (N, C_l, H_l, W_l);
        caches is the list of LayerCache needed by `backward`, owned by the caller.
        """
        wanted = set(check_layers(layers))
        if not wanted:
            return {}, []
        deepest = max(LAYER_NAMES.index(n) for n in wanted)
        feats, caches = {}, []
        for name, kind, conv in LAYERS[: deepest + 1]:
            if kind == "conv":
                w, b = self.params[conv]
                x, cache = ops.conv2d_forward(x, w, b, stride=1, pad=1)
            elif kind == "relu":
                x, cache = ops.relu_forward(x)
            else:
                x, cache = self._pool(x, 2, 2)
            caches.append(LayerCache(name, kind, cache))
            if name in wanted:
                feats[name] = x
        return feats, caches

    def extract(self, x, layers: Iterable[str]) -> dict:
        """Activations of `layers` for x: (N, 3, H, W), running only as deep as needed."""
        return self.forward(x, layers)[0]

    def backward(self, dfeats: dict, caches: list[LayerCache]):
        """Input gradient dx: (N, 3, H, W) given dL/d(activation) for some layers.

        Starts at the deepest layer that has a gradient (nothing deeper is touched) and adds each
        layer's own gradient as the backward pass reaches it.
        """
        dout = None
        for name, kind, cache in reversed(caches):
            if name in dfeats:
                dout = dfeats[name] if dout is None else dout + dfeats[name]
            if dout is None:
                continue
            if kind == "conv":
                dout = ops.conv2d_backward(dout, cache)
            elif kind == "relu":
                dout = ops.relu_backward(dout, cache)
            else:
                dout = self._unpool(dout, cache)
        if dout is None:
            raise ValueError("backward needs a gradient for at least one layer that forward ran")
        return dout


def load_vgg16(weights=None, *, backend: str = "auto", dtype: str = "float32", pooling: str = "max") -> VGG16:
    """VGG-16 with ImageNet weights from a Keras-layout HDF5 file (found or fetched when weights is None).

    The file's kernels are HWIO (3, 3, C, F); they are transposed once here to OIHW (F, C, 3, 3).
    """
    from scratchnst.weights import read_vgg16_weights, resolve_weights, verify_weights

    xp = get_backend(backend)
    dtype = check_dtype(dtype)
    path = resolve_weights(weights)
    sha256 = verify_weights(path)
    params = [
        (xp.ascontiguousarray(xp.asarray(kernel.transpose(3, 2, 0, 1), dtype=dtype)), xp.asarray(bias, dtype=dtype))
        for _, kernel, bias in read_vgg16_weights(path, verify=False)
    ]
    net = VGG16(params, pooling=pooling)
    net.weights_path, net.weights_sha256 = path, sha256
    return net
