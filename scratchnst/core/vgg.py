"""VGG-16's convolutional part run by our own layers: forward to the deepest layer asked for, backward
from there to the input pixels.

LAYERS is the one table of the network: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ...,
conv5_3, relu5_3, pool5, each with its output channels and spatial size. The forward and backward passes,
gradcheck, the memory estimate, the benchmark and the tiles' geometry all walk it. Convs are 3×3,
stride 1, pad 1; pools 2×2, stride 2 (max, or average with pooling="avg"): `window` says so, once.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from scratchnst.core import ops
from scratchnst.core.backend import get_array_module
from scratchnst.core.checks import check_choice

BLOCK_DEPTHS = (2, 2, 3, 3, 3)
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
POOLINGS = ("max", "avg")
CONV_ALGORITHMS = ("auto", "im2col", "winograd")
# The convs where Winograd measured faster than im2col in float32, forward and backward at 512²
# (docs/winograd.md, "Per layer"): all but conv1_1 (3 input channels) and the 64-channel convs,
# whose GEMMs are too thin and transforms memory-bound.
WINOGRAD_AUTO = frozenset(("conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"))
CONV_KERNEL, CONV_PAD = 3, 1  # every conv: 3×3, stride 1, zero padding 1 (the size is kept)
POOL_SIZE = 2  # every pool: 2×2 windows, stride 2, no padding (an odd size floors)


class Layer(NamedTuple):
    name: str  # "conv3_2", "relu3_2", "pool3"
    kind: str  # "conv", "relu" or "pool"
    conv: int  # index into VGG16.params for a conv, -1 otherwise
    c_in: int  # channels coming in
    channels: int  # channels going out
    pools: int  # 2×2 poolings before this layer's output: its grid is the input's // 2**pools
    keras: str  # the weights file's name of a conv ("block3_conv2"), "" otherwise


def _layer_table() -> tuple[Layer, ...]:
    table, conv, channels, pools = [], 0, 3, 0
    for block, (depth, width) in enumerate(zip(BLOCK_DEPTHS, BLOCK_WIDTHS), start=1):
        for i in range(1, depth + 1):
            table.append(Layer(f"conv{block}_{i}", "conv", conv, channels, width, pools, f"block{block}_conv{i}"))
            table.append(Layer(f"relu{block}_{i}", "relu", -1, width, width, pools, ""))
            conv, channels = conv + 1, width
        pools += 1
        table.append(Layer(f"pool{block}", "pool", -1, channels, channels, pools, ""))
    return tuple(table)


LAYERS = _layer_table()
LAYER_NAMES = tuple(layer.name for layer in LAYERS)
CONVS = tuple(layer for layer in LAYERS if layer.kind == "conv")


def check_layers(names: Iterable[str]) -> list[str]:
    """The names as a list, or ValueError naming the first unknown one."""
    names = list(names)
    for name in names:
        if name not in LAYER_NAMES:
            raise ValueError(f"unknown layer {name!r} (layers are conv1_1, relu1_1, ..., relu5_3, pool5)")
    return names


def layers_through(names: Iterable[str]) -> tuple[Layer, ...]:
    """The table from the input through the deepest of `names` (what a forward pass to them runs)."""
    names = check_layers(names)
    if not names:
        return ()
    return LAYERS[: max(LAYER_NAMES.index(n) for n in names) + 1]


def conv_algorithm(conv: str, dtype: str, layer: Layer) -> str:
    """"winograd" or "im2col": what a net built with `conv` runs in `dtype` for the conv `layer`."""
    if conv == "auto":
        return "winograd" if str(dtype) == "float32" and layer.name in WINOGRAD_AUTO else "im2col"
    return conv


def window(layer: Layer) -> tuple[int, int, int]:
    """(kernel, stride, pad) of `layer` along each axis: output unit i reads the layer's input at
    stride·i − pad .. stride·i − pad + kernel − 1 (a ReLU reads its own position: (1, 1, 0))."""
    if layer.kind == "conv":
        return CONV_KERNEL, 1, CONV_PAD
    if layer.kind == "pool":
        return POOL_SIZE, POOL_SIZE, 0
    return 1, 1, 0


def spatial_size(layer: Layer | str, height: int, width: int) -> tuple[int, int]:
    """(h, w) of `layer`'s output (a Layer or its name) for a height × width input: each 2×2 pool
    floors the halving."""
    if isinstance(layer, str):
        layer = LAYERS[LAYER_NAMES.index(layer)]
    for _ in range(layer.pools):
        height, width = height // POOL_SIZE, width // POOL_SIZE
    return height, width


class LayerCache(NamedTuple):
    layer: Layer
    cache: object

    @property
    def name(self) -> str:
        return self.layer.name


class VGG16:
    """The 13 frozen conv layers of VGG-16 with explicit forward and backward passes.

    params: 13 (kernel (F, C, 3, 3), bias (F,)) pairs, OIHW, all on one array module and dtype.
    conv: "im2col" (im2col + GEMM, the reference), "winograd" (F(4×4, 3×3) for every conv) or
    "auto": Winograd for the WINOGRAD_AUTO convs in float32, im2col elsewhere and in float64.
    """

    def __init__(self, params: list[tuple[object, object]], pooling: str = "max", conv: str = "auto"):
        if len(params) != len(CONVS):
            raise ValueError(f"VGG16 needs {len(CONVS)} conv layers, got {len(params)}")
        self.params = params
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.conv = check_choice("conv", conv, CONV_ALGORITHMS)
        self._transforms: dict[int, object] = {}  # Winograd filter transforms, made on first use
        self.weights_path = self.weights_sha256 = None

    @classmethod
    def from_hwio(cls, layers, *, xp, dtype: str, pooling: str = "max", conv: str = "auto") -> "VGG16":
        """From 13 (kernel (3, 3, C, F), bias (F,)) host pairs as the weights file stores them (HWIO):
        each kernel is transposed once here to OIHW (F, C, 3, 3) and moved to xp in `dtype`."""
        params = [
            (xp.ascontiguousarray(xp.asarray(kernel.transpose(3, 2, 0, 1), dtype=dtype)), xp.asarray(bias, dtype=dtype))
            for kernel, bias in layers
        ]
        return cls(params, pooling=pooling, conv=conv)

    @property
    def xp(self):
        return get_array_module(self.params[0][0])

    @property
    def dtype(self):
        return self.params[0][0].dtype

    def conv_algorithm(self, layer: Layer) -> str:
        """"winograd" or "im2col": what this net runs for the conv `layer`."""
        return conv_algorithm(self.conv, self.dtype, layer)

    def layer_forward(self, layer: Layer, x):
        """One layer of the table, forward: (out, cache)."""
        kernel, stride, pad = window(layer)
        if layer.kind == "conv":
            w, b = self.params[layer.conv]
            if self.conv_algorithm(layer) == "winograd":
                if layer.conv not in self._transforms:  # frozen weights: transformed once
                    self._transforms[layer.conv] = ops.winograd_filter_transform(w)
                return ops.winograd_conv2d_forward(x, w, b, pad, u=self._transforms[layer.conv])
            return ops.conv2d_forward(x, w, b, stride=stride, pad=pad)
        if layer.kind == "relu":
            return ops.relu_forward(x)
        pool = ops.maxpool2d_forward if self.pooling == "max" else ops.avgpool2d_forward
        return pool(x, kernel, stride)

    def layer_backward(self, layer: Layer, dout, cache):
        """One layer of the table, backward: d(input) from d(output)."""
        if layer.kind == "conv":
            backward = ops.winograd_conv2d_backward if isinstance(cache, ops.WinogradCache) else ops.conv2d_backward
            return backward(dout, cache)
        if layer.kind == "relu":
            return ops.relu_backward(dout, cache)
        unpool = ops.maxpool2d_backward if self.pooling == "max" else ops.avgpool2d_backward
        return unpool(dout, cache)

    def forward(self, x, layers: Iterable[str]):
        """Run x: (N, 3, H, W) up to the deepest of `layers`.

        Returns (feats, caches): feats maps each requested name to its activation (N, C_l, H_l, W_l);
        caches is the list of LayerCache needed by `backward`, owned by the caller.
        """
        wanted = set(check_layers(layers))
        feats, caches = {}, []
        for layer in layers_through(wanted):
            x, cache = self.layer_forward(layer, x)
            caches.append(LayerCache(layer, cache))
            if layer.name in wanted:
                feats[layer.name] = x
        return feats, caches

    def extract(self, x, layers: Iterable[str]) -> dict:
        """Activations of `layers` for x: (N, 3, H, W), running only as deep as needed."""
        return self.forward(x, layers)[0]

    def backward(self, dfeats: dict, caches: list[LayerCache], *, consume: bool = False):
        """Input gradient dx: (N, 3, H, W) given dL/d(activation) for some layers.

        Starts at the deepest layer that has a gradient (nothing deeper is touched) and adds each
        layer's own gradient as the backward pass reaches it. consume: take each cache out of
        `caches` as the pass leaves its layer (the list ends empty), so that the masks of the deep
        layers are not held while the large shallow ones are worked on: for one backward per
        forward, as the objective runs them.
        """
        dout = None
        for layer, cache in _drain(caches) if consume else reversed(caches):
            if layer.name in dfeats:
                if dout is None:
                    dout = dfeats[layer.name]
                else:  # dout is the layer above's fresh output: ours to add into
                    dout += dfeats[layer.name]
            if dout is not None:
                dout = self.layer_backward(layer, dout, cache)
        if dout is None:
            raise ValueError("backward needs a gradient for at least one layer that forward ran")
        return dout


def _drain(items: list):
    """The list's items last to first, each removed from it as it is handed out."""
    while items:
        yield items.pop()
