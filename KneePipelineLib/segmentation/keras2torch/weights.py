"""Keras weight arrays -> the layouts torch's ops take (the weight mapping of the Keras -> PyTorch loader).

Conv2D kernels (kh, kw, in, out) -> (out, in, kh, kw); Conv2DTranspose (kh, kw, out, in) -> (in, out, kh, kw);
Dense (in, out) -> (out, in); BatchNormalization folded to ``scale`` = gamma / sqrt(var + eps) and
``shift`` = beta - mean * scale (float64 arithmetic, stored float32); PReLU ``alpha`` kept in Keras layout.
Weights are found by their short name, else by position in the file's order (older writers).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ...errors import ModelInvalidError


def torch_weights(layer: Dict[str, Any], w: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """One layer's Keras weights in the layout its torch op takes (short name -> array); BatchNormalization
    is folded into a per-channel ``scale`` and ``shift``. Raises :class:`ModelInvalidError` for a missing
    or misshapen weight."""
    out: Dict[str, np.ndarray] = {}
    cls, name, c = layer["class_name"], layer["name"], layer["config"]
    values = list(w.values())

    def get(short: str, index: int, required: bool = True):
        if short in w:
            return w[short]
        if index < len(values):
            return values[index]
        if required:
            raise ModelInvalidError("Layer %r (%s) is missing its weight %r in the file."
                                    % (name, cls, short))
        return None

    def put(short: str, arr: np.ndarray) -> None:
        out[short] = np.ascontiguousarray(arr)

    if cls == "Conv2D":
        k = get("kernel", 0)
        if k.ndim != 4:
            raise ModelInvalidError("Layer %r (Conv2D) kernel has shape %s, expected 4-D." % (name, k.shape))
        put("kernel", k.transpose(3, 2, 0, 1))  # (kh,kw,in,out) -> (out,in,kh,kw)
        if c.get("use_bias", True):
            put("bias", get("bias", 1))
    elif cls == "Conv2DTranspose":
        k = get("kernel", 0)
        if k.ndim != 4:
            raise ModelInvalidError("Layer %r (Conv2DTranspose) kernel has shape %s." % (name, k.shape))
        put("kernel", k.transpose(3, 2, 0, 1))  # (kh,kw,out,in) -> (in,out,kh,kw)
        if c.get("use_bias", True):
            put("bias", get("bias", 1))
    elif cls == "BatchNormalization":
        i = 0
        gamma = beta = None
        if c.get("scale", True):
            gamma = get("gamma", i)
            i += 1
        if c.get("center", True):
            beta = get("beta", i)
            i += 1
        mean, var = get("moving_mean", i), get("moving_variance", i + 1)
        eps = float(c.get("epsilon", 1e-3))
        inv = 1.0 / np.sqrt(var.astype(np.float64) + eps)
        scale = inv * (gamma if gamma is not None else 1.0)
        shift = (beta if beta is not None else 0.0) - mean * scale
        put("scale", scale.astype(np.float32))
        put("shift", shift.astype(np.float32))
    elif cls == "PReLU":
        put("alpha", get("alpha", 0))
    elif cls == "Dense":
        put("kernel", get("kernel", 0).T.copy())  # (in,out) -> (out,in)
        if c.get("use_bias", True):
            put("bias", get("bias", 1))
    return out
