"""Folding a BatchNormalization into the Conv2D before it (inference only): the batch norm's per-channel
``scale`` and ``shift`` (already computed from gamma, beta, moving mean and variance by :mod:`.weights`) become
the convolution's kernel and bias, so the network does one pass over each feature map instead of three
(docs/SPEED.md: the DOSMA-size U-Net spends ~8 % of its CPU time in the separate multiply and add).

Folded only where it is exact up to float rounding: the Conv2D is called once, has a linear activation and
feeds nothing but that BatchNormalization, which normalises the convolution's channel axis. Arithmetic in
float64, stored float32 (the fold changes the logits by ~1e-6 relative, far inside the 1e-4 to which the
loader matches Keras on the TensorFlow-written fixtures).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .graph import _activation_name, _inbound_refs


def _channel_axes(data_format: str) -> Tuple[int, ...]:
    """The Keras axis arguments that name the channel axis of a 4-D tensor of ``data_format``."""
    return (1, -3) if data_format == "channels_first" else (-1, 3)


def _bn_axis(config: Dict[str, Any]) -> Optional[int]:
    axis = config.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    return int(axis)


def foldable_batchnorms(layers: List[Dict[str, Any]], output_refs: List[Tuple]) -> Dict[str, str]:
    """{BatchNormalization name: Conv2D name} for every batch norm that can be folded into its convolution."""
    by_name = {layer["name"]: layer for layer in layers}
    uses: Dict[str, int] = {}
    for layer in layers:
        for node in layer.get("inbound_nodes", []):
            for ref in _inbound_refs(node):
                uses[ref[0]] = uses.get(ref[0], 0) + 1
    outputs = {r[0] for r in output_refs}
    folds: Dict[str, str] = {}
    for layer in layers:
        if layer["class_name"] != "BatchNormalization" or len(layer.get("inbound_nodes", [])) != 1:
            continue
        refs = _inbound_refs(layer["inbound_nodes"][0])
        if len(refs) != 1 or refs[0][1] != 0 or refs[0][2] != 0:
            continue
        conv = by_name.get(refs[0][0])
        if conv is None or conv["class_name"] != "Conv2D" or len(conv.get("inbound_nodes", [])) != 1:
            continue
        c = conv["config"]
        if _activation_name(c.get("activation")) not in (None, "linear"):
            continue
        if uses.get(conv["name"], 0) != 1 or conv["name"] in outputs:
            continue
        if _bn_axis(layer["config"]) not in _channel_axes(c.get("data_format", "channels_last")):
            continue
        folds[layer["name"]] = conv["name"]
    return folds


def fold_into_conv(conv: Dict[str, np.ndarray], bn: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Torch-layout Conv2D weights (``kernel`` (out, in, kh, kw), optional ``bias``) with a batch norm's
    ``scale``/``shift`` folded in: kernel * scale per output channel, bias * scale + shift."""
    scale = bn["scale"].astype(np.float64)
    shift = bn["shift"].astype(np.float64)
    kernel = conv["kernel"].astype(np.float64) * scale[:, None, None, None]
    bias = conv.get("bias")
    bias = np.zeros_like(scale) if bias is None else bias.astype(np.float64)
    return {"kernel": np.ascontiguousarray(kernel.astype(np.float32)),
            "bias": np.ascontiguousarray((bias * scale + shift).astype(np.float32))}
