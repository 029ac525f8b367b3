"""Layers with explicit backward passes: paired `op_forward -> (out, cache)` / `op_backward(dout, cache) -> dx`.

Weights are frozen everywhere: only input gradients are computed, never weight gradients.
"""

from scratchnst.core.ops.conv import ConvCache, conv2d_backward, conv2d_forward
from scratchnst.core.ops.gram import gram_backward, gram_forward
from scratchnst.core.ops.pool import (
    PoolCache,
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from scratchnst.core.ops.relu import relu_backward, relu_forward
from scratchnst.core.ops.winograd import WinogradCache, winograd_conv2d_backward, winograd_conv2d_forward, winograd_filter_transform

__all__ = [
    "ConvCache",
    "PoolCache",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "conv2d_backward",
    "conv2d_forward",
    "gram_backward",
    "gram_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
    "WinogradCache",
    "winograd_conv2d_backward",
    "winograd_conv2d_forward",
    "winograd_filter_transform",
]
