"""Run Keras 2 ``.h5`` models (functional API) on PyTorch, without TensorFlow.

A Keras 2 full-model ``.h5`` file holds the architecture as a JSON string in the root attribute
``model_config`` and the weights in the group ``model_weights``: one sub-group per layer (attribute
``layer_names`` lists them) whose attribute ``weight_names`` lists dataset paths such as
``conv2d/kernel:0`` relative to that sub-group. :func:`load_keras_model` reads both with h5py and builds
:class:`KerasGraph`, a ``torch.nn.Module`` that executes the layer graph (``inbound_nodes``) with the
same arithmetic as Keras, including TensorFlow's asymmetric "same" padding and the output-size rules of
``Conv2DTranspose``.

Data layout: the module takes and returns tensors in the file's own layout (``(N, 1, H, W)`` for a
channels-first model, ``(N, H, W, 1)`` for channels-last). Inside, every tensor carries a flag saying
whether it is stored in Keras order or permuted to channels-first (what torch convolutions need), so a
channels-last model is permuted once at its first convolution, not around every layer; axis arguments
(BatchNormalization, Concatenate, Softmax, PReLU) are mapped through the flag.

Supported layer classes: see :data:`SUPPORTED_LAYERS`. Anything else raises
:class:`~KneePipelineLib.errors.ModelInvalidError` naming the layer and its class.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ModelInvalidError

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


# ----------------------------------------------------------------------------------------------------
# reading the file
# ----------------------------------------------------------------------------------------------------
def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":  # pragma: no cover - exotic writers
        return _attr_str(value.item())
    return str(value)


def _attr_list(value: Any) -> List[str]:
    return [_attr_str(v) for v in np.asarray(value).ravel()]


def read_keras_h5(path: str | Path) -> Tuple[Dict[str, Any], Dict[str, Dict[str, np.ndarray]], Dict[str, str]]:
    """Return ``(model_config, weights, info)`` of a Keras 2 full-model ``.h5`` file.

    ``weights`` maps layer name -> {short weight name ("kernel", "bias", "gamma", ...): array}, keeping
    the file's order. ``info`` holds ``keras_version`` and ``backend`` where present.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ModelInvalidError("Keras model file not found: %s" % path,
                                hint="Check the path, or download the model again.")
    try:
        f = h5py.File(str(path), "r")
    except OSError as exc:
        raise ModelInvalidError("Not a readable HDF5 (.h5) file: %s (%s)" % (path, exc)) from exc
    with f:
        if "model_config" not in f.attrs:
            raise ModelInvalidError(
                "%s holds no model architecture (no 'model_config' attribute): it is a weights-only file "
                "or not a Keras 2 model." % path.name,
                hint="Use the full-model .h5 file saved by model.save(), not model.save_weights().")
        try:
            config = json.loads(_attr_str(f.attrs["model_config"]))
        except ValueError as exc:
            raise ModelInvalidError("The model_config of %s is not valid JSON." % path.name) from exc
        info = {k: _attr_str(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
        group = f["model_weights"] if "model_weights" in f else f
        weights: Dict[str, Dict[str, np.ndarray]] = {}
        names = _attr_list(group.attrs["layer_names"]) if "layer_names" in group.attrs else []
        for lname in names:
            lg = group[lname]
            entries: Dict[str, np.ndarray] = {}
            for wname in _attr_list(lg.attrs.get("weight_names", [])):
                short = wname.split("/")[-1].split(":")[0]
                if short in entries:  # never silently overwrite: keep a unique key
                    short = wname
                entries[short] = np.asarray(lg[wname], dtype=np.float32)
            weights[lname] = entries
    return config, weights, info


# ----------------------------------------------------------------------------------------------------
# graph description
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# the executor
# ----------------------------------------------------------------------------------------------------
def _build_module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class _KerasGraph(nn.Module):
        """Executes a Keras functional graph; weights are torch buffers (``.to(device)`` moves them)."""

        def __init__(self, config: Dict[str, Any], weights: Dict[str, Dict[str, np.ndarray]],
                     source: str = "") -> None:
            super().__init__()
            self.source = source
            cls = config.get("class_name")
            cfg = config.get("config", {})
            if cls == "Sequential":
                cfg = _sequential_to_functional(cfg)
            elif cls not in ("Functional", "Model"):
                raise ModelInvalidError("Unsupported Keras model class %r in %s." % (cls, source or "the file"),
                                        hint="Only functional (Model/Functional) and Sequential models are supported.")
            self.layers_cfg: List[Dict[str, Any]] = cfg["layers"]
            self.input_refs = [tuple(r[:3]) for r in _as_ref_list(cfg["input_layers"])]
            self.output_refs = [tuple(r[:3]) for r in _as_ref_list(cfg["output_layers"])]
            self.single_output = not (isinstance(cfg["output_layers"][0], (list, tuple))
                                      and len(cfg["output_layers"]) > 1)
            self._keys: Dict[str, str] = {}
            self.input_shapes: List[Optional[Tuple]] = []
            by_name = {}
            for layer in self.layers_cfg:
                name = layer.get("name") or layer["config"]["name"]
                layer["name"] = name
                by_name[name] = layer
                self._check_supported(layer)
                self._register_weights(layer, weights.get(name, {}))
            for ref in self.input_refs:
                lc = by_name[ref[0]]["config"]
                shape = lc.get("batch_input_shape") or lc.get("batch_shape")
                self.input_shapes.append(tuple(shape) if shape else None)
            self._order = self._schedule()

        # -- construction helpers --------------------------------------------------------------
        def _check_supported(self, layer: Dict[str, Any]) -> None:
            cls = layer["class_name"]
            if cls not in SUPPORTED_LAYERS:
                raise ModelInvalidError(
                    "Keras layer %r of class %s is not supported by the PyTorch loader (%s)."
                    % (layer["name"], cls, self.source or "model file"),
                    hint="Supported layer classes: %s." % ", ".join(SUPPORTED_LAYERS))
            c = layer["config"]
            if cls in ("Conv2D", "Conv2DTranspose", "Activation"):
                act = _activation_name(c.get("activation"))
                try:
                    _activation(act, torch.zeros(1), 0)
                except KeyError:
                    raise ModelInvalidError("Layer %r (%s) uses the unsupported activation %r."
                                            % (layer["name"], cls, act)) from None
            if cls == "Conv2DTranspose" and int(c.get("groups", 1) or 1) != 1:
                raise ModelInvalidError("Layer %r (Conv2DTranspose) has groups=%s; only groups=1 is supported "
                                        "(Keras 2 itself ignores groups for transposed convolutions)."
                                        % (layer["name"], c.get("groups")))
            if cls == "UpSampling2D" and c.get("interpolation", "nearest") not in ("nearest", "bilinear"):
                raise ModelInvalidError("Layer %r (UpSampling2D) uses interpolation %r; only nearest and "
                                        "bilinear are supported." % (layer["name"], c.get("interpolation")))
            if cls in ("MaxPooling2D", "AveragePooling2D", "Conv2D", "Conv2DTranspose") and \
                    c.get("padding", "valid") not in ("valid", "same"):
                raise ModelInvalidError("Layer %r (%s) uses padding %r." % (layer["name"], cls, c.get("padding")))

        def _key(self, layer_name: str, wname: str) -> str:
            key = "w%d_%s" % (len(self._keys), wname)
            self._keys[layer_name + "/" + wname] = key
            return key

        def _register_weights(self, layer: Dict[str, Any], w: Dict[str, np.ndarray]) -> None:
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
                self.register_buffer(self._key(name, short), torch.from_numpy(np.ascontiguousarray(arr)))

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

        def _w(self, layer_name: str, short: str):
            key = self._keys.get(layer_name + "/" + short)
            return None if key is None else getattr(self, key)

        def _schedule(self) -> List[Tuple[Dict[str, Any], int, List[Tuple[str, int, int]]]]:
            """Topological order of (layer, node_index, input refs)."""
            calls = []
            for layer in self.layers_cfg:
                if layer["class_name"] == "InputLayer":
                    continue
                for ni, node in enumerate(layer.get("inbound_nodes", [])):
                    calls.append((layer, ni, _inbound_refs(node)))
            have = {r for r in self.input_refs}
            have |= {(r[0], r[1], 0) for r in self.input_refs}
            order, pending = [], list(calls)
            while pending:
                progressed = False
                rest = []
                for call in pending:
                    if all((r[0], r[1]) in {(h[0], h[1]) for h in have} for r in call[2]):
                        order.append(call)
                        have.add((call[0]["name"], call[1], 0))
                        progressed = True
                    else:
                        rest.append(call)
                pending = rest
                if not progressed:
                    raise ModelInvalidError("The layer graph of %s has unreachable layers (%s)."
                                            % (self.source or "the model", ", ".join(c[0]["name"] for c in rest)))
            return order

        # -- execution ---------------------------------------------------------------------------
        def forward(self, *inputs):
            if len(inputs) != len(self.input_refs):
                raise ValueError("expected %d input tensor(s), got %d" % (len(self.input_refs), len(inputs)))
            values: Dict[Tuple[str, int], List[_T]] = {}
            for ref, x in zip(self.input_refs, inputs):
                values[(ref[0], ref[1])] = [_T(x)]
            for layer, ni, refs in self._order:
                args = [values[(r[0], r[1])][r[2]] for r in refs]
                out = self._call(layer, args)
                values[(layer["name"], ni)] = [out]
            outs = [values[(r[0], r[1])][r[2]].keras() for r in self.output_refs]
            outs = [o.contiguous() for o in outs]
            return outs[0] if len(outs) == 1 else tuple(outs)

        def _call(self, layer: Dict[str, Any], args: List[_T]) -> _T:
            cls, name, c = layer["class_name"], layer["name"], layer["config"]
            if cls in _IDENTITY:
                return args[0]
            if cls == "Conv2D":
                x, cf = _to_cf(args[0], c.get("data_format", "channels_last"))
                kh, kw = _pair(c["kernel_size"])
                sh, sw = _pair(c.get("strides", 1))
                dh, dw = _pair(c.get("dilation_rate", 1))
                if c.get("padding", "valid") == "same":
                    ph, pw = _same_pads(x.shape[2], kh, sh, dh), _same_pads(x.shape[3], kw, sw, dw)
                    if ph[0] == ph[1] and pw[0] == pw[1]:
                        pad = (ph[0], pw[0])
                    else:
                        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
                        pad = (0, 0)
                else:
                    pad = (0, 0)
                y = F.conv2d(x, self._w(name, "kernel"), self._w(name, "bias"), (sh, sw), pad, (dh, dw),
                             int(c.get("groups", 1) or 1))
                out = _T(y, cf)
                return self._act(out, c.get("activation"))
            if cls == "Conv2DTranspose":
                x, cf = _to_cf(args[0], c.get("data_format", "channels_last"))
                kh, kw = _pair(c["kernel_size"])
                sh, sw = _pair(c.get("strides", 1))
                dh, dw = _pair(c.get("dilation_rate", 1))
                op = c.get("output_padding")
                oph, opw = (None, None) if op is None else _pair(op)
                padding = c.get("padding", "valid")
                full = F.conv_transpose2d(x, self._w(name, "kernel"), None, (sh, sw), 0, 0, 1, (dh, dw))
                outs = []
                for ax, n_in, k, s, d, o in ((2, x.shape[2], kh, sh, dh, oph), (3, x.shape[3], kw, sw, dw, opw)):
                    length = _deconv_length(n_in, k, padding, o, s, d)
                    before = _same_pads(length, k, s, d)[0] if padding == "same" else 0
                    outs.append((ax, length, before))
                y = full
                for ax, length, before in outs:
                    avail = y.shape[ax] - before
                    if avail >= length:
                        y = y.narrow(ax, before, length)
                    else:  # output longer than the full transposed conv: zeros after (Keras does the same)
                        y = y.narrow(ax, before, avail)
                        padspec = [0, 0, 0, 0]
                        padspec[(3 - ax) * 2 + 1] = length - avail
                        y = F.pad(y, padspec)
                b = self._w(name, "bias")
                if b is not None:
                    y = y + b.view(1, -1, 1, 1)
                return self._act(_T(y, cf), c.get("activation"))
            if cls == "BatchNormalization":
                t = args[0]
                axis = c.get("axis", -1)
                if isinstance(axis, (list, tuple)):
                    if len(axis) != 1:
                        raise ModelInvalidError("Layer %r (BatchNormalization) normalises over several axes %s."
                                                % (name, axis))
                    axis = axis[0]
                a = t.axis(int(axis))
                shape = [1] * t.x.dim()
                shape[a] = -1
                y = t.x * self._w(name, "scale").view(shape) + self._w(name, "shift").view(shape)
                return _T(y, t.cf)
            if cls == "Activation":
                return self._act(args[0], c.get("activation"))
            if cls == "ReLU":
                t = args[0]
                x = t.x
                slope = float(c.get("negative_slope", 0.0) or 0.0)
                thr = float(c.get("threshold", 0.0) or 0.0)
                maxv = c.get("max_value")
                y = torch.where(x >= thr, x, slope * (x - thr))
                if maxv is not None:
                    y = torch.clamp(y, max=float(maxv))
                return _T(y, t.cf)
            if cls == "LeakyReLU":
                alpha = c.get("alpha", c.get("negative_slope", 0.3))
                return _T(F.leaky_relu(args[0].x, float(alpha)), args[0].cf)
            if cls == "ELU":
                return _T(F.elu(args[0].x, float(c.get("alpha", 1.0))), args[0].cf)
            if cls == "PReLU":
                t = args[0]
                alpha = self._w(name, "alpha").unsqueeze(0)  # keras layout incl. batch
                if t.cf:
                    alpha = alpha.permute(0, 3, 1, 2)
                x = t.x
                return _T(torch.where(x >= 0, x, alpha * x), t.cf)
            if cls == "Softmax":
                t = args[0]
                axis = c.get("axis", -1)
                axes = axis if isinstance(axis, (list, tuple)) else [axis]
                dims = sorted(t.axis(int(a)) for a in axes)
                if len(dims) == 1:
                    return _T(torch.softmax(t.x, dim=dims[0]), t.cf)
                m = t.x.amax(dim=dims, keepdim=True)
                e = torch.exp(t.x - m)
                return _T(e / e.sum(dim=dims, keepdim=True), t.cf)
            if cls in ("MaxPooling2D", "AveragePooling2D"):
                x, cf = _to_cf(args[0], c.get("data_format", "channels_last"))
                kh, kw = _pair(c.get("pool_size", 2))
                strides = c.get("strides") or (kh, kw)
                sh, sw = _pair(strides)
                if c.get("padding", "valid") == "same":
                    ph, pw = _same_pads(x.shape[2], kh, sh), _same_pads(x.shape[3], kw, sw)
                else:
                    ph = pw = (0, 0)
                padspec = (pw[0], pw[1], ph[0], ph[1])
                if cls == "MaxPooling2D":
                    if any(padspec):
                        x = F.pad(x, padspec, value=float("-inf"))
                    y = F.max_pool2d(x, (kh, kw), (sh, sw))
                else:
                    if any(padspec):  # TF excludes padding from the average
                        ones = F.pad(torch.ones_like(x[:1, :1]), padspec)
                        x = F.pad(x, padspec)
                        y = F.avg_pool2d(x, (kh, kw), (sh, sw)) / F.avg_pool2d(ones, (kh, kw), (sh, sw))
                    else:
                        y = F.avg_pool2d(x, (kh, kw), (sh, sw))
                return _T(y, cf)
            if cls == "UpSampling2D":
                x, cf = _to_cf(args[0], c.get("data_format", "channels_last"))
                fh, fw = _pair(c.get("size", 2))
                if c.get("interpolation", "nearest") == "nearest":
                    y = x.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)
                else:  # tf.image.resize bilinear: half-pixel centres, no antialias (upsampling)
                    y = F.interpolate(x, size=(x.shape[2] * fh, x.shape[3] * fw), mode="bilinear",
                                      align_corners=False)
                return _T(y, cf)
            if cls == "Concatenate":
                ts = _common_layout(args)
                return _T(torch.cat([t.x for t in ts], dim=ts[0].axis(int(c.get("axis", -1)))), ts[0].cf)
            if cls in _ELEMENTWISE_MERGE:
                ts = _common_layout(args)
                xs = [t.x for t in ts]
                if cls == "Add":
                    y = xs[0]
                    for v in xs[1:]:
                        y = y + v
                elif cls == "Subtract":
                    y = xs[0] - xs[1]
                elif cls == "Multiply":
                    y = xs[0]
                    for v in xs[1:]:
                        y = y * v
                elif cls == "Average":
                    y = sum(xs[1:], xs[0]) / len(xs)
                elif cls == "Maximum":
                    y = xs[0]
                    for v in xs[1:]:
                        y = torch.maximum(y, v)
                else:
                    y = xs[0]
                    for v in xs[1:]:
                        y = torch.minimum(y, v)
                return _T(y, ts[0].cf)
            if cls in ("Cropping2D", "ZeroPadding2D"):
                x, cf = _to_cf(args[0], c.get("data_format", "channels_last"))
                key = "cropping" if cls == "Cropping2D" else "padding"
                spec = c.get(key, 1 if cls == "ZeroPadding2D" else 0)
                if isinstance(spec, int):
                    (t0, b0), (l0, r0) = (spec, spec), (spec, spec)
                else:
                    (t0, b0), (l0, r0) = [_pair(v) for v in spec]
                if cls == "Cropping2D":
                    y = x[:, :, t0:x.shape[2] - b0, l0:x.shape[3] - r0]
                else:
                    y = F.pad(x, (l0, r0, t0, b0))
                return _T(y, cf)
            if cls == "Reshape":
                x = args[0].keras()
                return _T(x.reshape((x.shape[0],) + tuple(int(v) for v in c["target_shape"])))
            if cls == "Permute":
                x = args[0].keras()
                return _T(x.permute((0,) + tuple(int(v) for v in c["dims"])))
            if cls == "Flatten":
                t = args[0]
                x = t.keras()
                if c.get("data_format") == "channels_first" and x.dim() > 2:
                    x = x.permute((0,) + tuple(range(2, x.dim())) + (1,))
                return _T(x.reshape(x.shape[0], -1))
            if cls == "Dense":
                x = args[0].keras()
                y = F.linear(x, self._w(name, "kernel"), self._w(name, "bias"))
                return self._act(_T(y), c.get("activation"))
            raise ModelInvalidError("Keras layer %r of class %s is not supported." % (name, cls))  # pragma: no cover

        def _act(self, t: _T, act: Any) -> _T:
            name = _activation_name(act)
            if name in (None, "linear"):
                return t
            return _T(_activation(name, t.x, t.axis(-1)), t.cf)

    return _KerasGraph


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


_MODULE_CLASS = None


def keras_graph_class():
    """The ``torch.nn.Module`` subclass (built on first use so that importing this module needs no torch)."""
    global _MODULE_CLASS
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _build_module_class()
    return _MODULE_CLASS


def build_keras_graph(config: Dict[str, Any], weights: Dict[str, Dict[str, np.ndarray]], source: str = ""):
    """Build the torch module from an already parsed config and weights (used by tests and the benchmark)."""
    return keras_graph_class()(config, weights, source)


def load_keras_model(path: str | Path, device: str = "cpu"):
    """Load a Keras 2 ``.h5`` model as a ``torch.nn.Module`` in eval mode on ``device``.

    The module maps a float32 tensor in the file's own layout (e.g. ``(N, 1, H, W)`` for channels-first)
    to the file's output (for the DOSMA U-Nets: softmax probabilities, same layout). Attributes:
    ``input_shapes`` (the stored batch input shapes), ``data_format`` ("channels_first" or
    "channels_last", from the first convolution), ``keras_info`` (keras_version, backend).
    """
    config, weights, info = read_keras_h5(path)
    try:
        module = build_keras_graph(config, weights, source=Path(path).name)
    except ModelInvalidError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelInvalidError("Could not build the network stored in %s: %s: %s"
                                % (Path(path).name, type(exc).__name__, exc)) from exc
    module.keras_info = info
    module.data_format = model_data_format(config)
    module.eval()
    return module.to(device)


def model_data_format(config: Dict[str, Any]) -> str:
    """'channels_first' or 'channels_last': the data_format of the first layer that has one."""
    layers = config.get("config", {}).get("layers", [])
    for layer in layers:
        df = layer.get("config", {}).get("data_format")
        if df in ("channels_first", "channels_last"):
            return df
    return "channels_last"


def save_keras_h5(path: str | Path, config: Dict[str, Any], weights: Dict[str, Dict[str, np.ndarray]],
                  keras_version: str = "2.11.0") -> Path:
    """Write a minimal Keras 2 full-model ``.h5`` (``model_config`` + ``model_weights``) with h5py.

    ``weights``: layer name -> {short name: array in Keras layout}, in Keras's weight order. Used by the
    tests and the benchmark to build small models in the published format without TensorFlow.
    """
    import h5py

    path = Path(path)
    with h5py.File(str(path), "w") as f:
        f.attrs["keras_version"] = keras_version
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        g = f.create_group("model_weights")
        names = [l.get("name") or l["config"]["name"] for l in config["config"]["layers"]]
        g.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            lg = g.create_group(n)
            ws = weights.get(n, {})
            lg.attrs["weight_names"] = np.array([("%s/%s:0" % (n, k)).encode() for k in ws])
            for k, v in ws.items():
                lg.create_dataset("%s/%s:0" % (n, k), data=np.asarray(v, dtype=np.float32))
    return path


def layer_config(class_name: str, name: str, inbound: Sequence[str], **config: Any) -> Dict[str, Any]:
    """One functional-API layer entry (Keras 2 form) for hand-built configs."""
    config = dict(config, name=name)
    nodes = [[[src, 0, 0, {}] for src in inbound]] if inbound else []
    return {"class_name": class_name, "name": name, "config": config, "inbound_nodes": nodes}


def model_config(layers: List[Dict[str, Any]], inputs: Sequence[str], outputs: Sequence[str],
                 name: str = "model") -> Dict[str, Any]:
    return {"class_name": "Functional", "config": {
        "name": name, "layers": layers,
        "input_layers": [[n, 0, 0] for n in inputs], "output_layers": [[n, 0, 0] for n in outputs]}}
