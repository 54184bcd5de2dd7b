"""The Keras layer graph as data: supported layers, inbound-node references, TensorFlow's padding and
transposed-convolution size rules, activations, and the layout-tagged tensor :class:`T` the executor passes
between layers (``cf`` True: stored channels-first while Keras sees channels-last)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...errors import ModelInvalidError

SUPPORTED_LAYERS = (
    "InputLayer", "Conv2D", "Conv2DTranspose", "BatchNormalization", "Activation", "ReLU", "PReLU",
    "LeakyReLU", "ELU", "Softmax", "MaxPooling2D", "AveragePooling2D", "UpSampling2D", "Concatenate", "Add",
    "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dropout", "SpatialDropout2D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Reshape", "Permute", "Flatten", "Dense",
    "Cropping2D", "ZeroPadding2D",
)
_IDENTITY = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
             "ActivityRegularization"}
_ELEMENTWISE_MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}

# Keras (N, H, W, C) axis -> position in the channels-first stored tensor (N, C, H, W)
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def _inbound_refs(node: Any) -> List[Tuple[str, int, int]]:
    """Tensor references of one inbound node, in the Keras 2 list form or the Keras 3 dict form."""
    refs: List[Tuple[str, int, int]] = []
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}

        def walk(obj: Any) -> None:
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    h = obj["config"]["keras_history"]
                    refs.append((h[0], int(h[1]), int(h[2])))
                else:
                    for v in obj.values():
                        walk(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    walk(v)

        walk(node.get("args", []))
        return refs
    for item in node:  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        refs.append((item[0], int(item[1]), int(item[2])))
    return refs


def _pair(v: Any) -> Tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _same_pads(size: int, k: int, s: int, d: int = 1) -> Tuple[int, int]:
    """TensorFlow 'SAME' padding for one axis: (before, after); the odd pixel goes after."""
    k_eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + k_eff - size, 0)
    return total // 2, total - total // 2


def _deconv_length(n_in: int, k: int, padding: str, output_padding: Optional[int], s: int, d: int) -> int:
    """Output length of Keras's Conv2DTranspose (keras.utils.conv_utils.deconv_output_length)."""
    k_eff = k + (k - 1) * (d - 1)
    if output_padding is None:
        if padding == "valid":
            return n_in * s + max(k_eff - s, 0)
        if padding == "full":
            return n_in * s - (s + k_eff - 2)
        return n_in * s
    pad = {"same": k_eff // 2, "valid": 0, "full": k_eff - 1}[padding]
    return (n_in - 1) * s + k_eff - 2 * pad + output_padding


class _T:
    """A tensor plus a flag: ``cf`` True means stored channels-first while Keras sees channels-last."""

    __slots__ = ("x", "cf")

    def __init__(self, x, cf: bool = False) -> None:
        self.x = x
        self.cf = cf

    def keras(self):
        """The tensor in Keras's own layout."""
        if self.cf:
            return self.x.permute(0, 2, 3, 1)
        return self.x

    def axis(self, a: int) -> int:
        nd = self.x.dim()
        a = a % nd
        if self.cf:
            return _NHWC_TO_NCHW_AXIS[a]
        return a


def _to_cf(t: _T, data_format: str):
    """A 4-D tensor as (N, C, H, W) for an op with Keras ``data_format``; returns (tensor, out_cf_flag)."""
    if data_format == "channels_last":
        if t.cf:
            return t.x, True
        return t.x.permute(0, 3, 1, 2), True
    return t.keras(), False


def _activation(name: str, x, axis: int):
    import torch
    import torch.nn.functional as F

    if name in (None, "linear"):
        return x
    if name == "relu":
        return F.relu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "softmax":
        return torch.softmax(x, dim=axis)
    if name == "tanh":
        return torch.tanh(x)
    if name == "elu":
        return F.elu(x)
    if name == "selu":
        return F.selu(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "softsign":
        return F.softsign(x)
    if name in ("swish", "silu"):
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)  # Keras 2 default approximate=False
    if name == "exponential":
        return torch.exp(x)
    if name == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    if name == "hard_sigmoid":  # Keras 2: clip(0.2 x + 0.5, 0, 1)
        return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)
    raise KeyError(name)


def _activation_name(act: Any) -> Optional[str]:
    if act is None or isinstance(act, str):
        return act
    if isinstance(act, dict):  # serialised activation object (newer Keras)
        return act.get("config", {}).get("name") or act.get("class_name")
    return str(act)


def _as_ref_list(v: Any) -> List[List[Any]]:
    if v and not isinstance(v[0], (list, tuple)):  # a single [name, node, tensor]
        return [list(v)]
    return [list(r) for r in v]


def _common_layout(ts: Sequence[_T]) -> List[_T]:
    if all(t.cf == ts[0].cf for t in ts):
        return list(ts)
    return [_T(t.keras()) for t in ts]


def _sequential_to_functional(cfg: Dict[str, Any]) -> Dict[str, Any]:
    layers = [dict(l) for l in (cfg["layers"] if isinstance(cfg, dict) else cfg)]
    out = []
    if layers[0]["class_name"] != "InputLayer":
        shape = layers[0]["config"].get("batch_input_shape")
        if shape is None:
            raise ModelInvalidError("Sequential model without an input shape.")
        out.append({"class_name": "InputLayer", "name": "input_seq",
                    "config": {"name": "input_seq", "batch_input_shape": shape}, "inbound_nodes": []})
    else:
        layers[0]["name"] = layers[0]["config"]["name"]
        out.append(layers.pop(0))
    prev = out[0]["name"]
    for l in layers:
        l["name"] = l["config"]["name"]
        l["inbound_nodes"] = [[[prev, 0, 0, {}]]]
        out.append(l)
        prev = l["name"]
    return {"layers": out, "input_layers": [[out[0]["name"], 0, 0]], "output_layers": [[prev, 0, 0]]}


