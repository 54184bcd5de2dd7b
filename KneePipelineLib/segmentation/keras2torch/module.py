"""The Keras -> PyTorch module: a ``torch.nn.Module`` executing a Keras functional (or Sequential) graph in
topological order of its inbound nodes, with the file's weights as buffers, and :func:`load_keras_model`.

Data layout: the module takes and returns tensors in the file's own layout (``(N, 1, H, W)`` for a
channels-first model, ``(N, H, W, 1)`` for channels-last). Inside, every tensor carries a flag saying
whether it is stored in Keras order or permuted to channels-first (what torch convolutions need), so a
channels-last model is permuted once at its first convolution, not around every layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...errors import ModelInvalidError
from .fold import fold_into_conv, foldable_batchnorms
from .graph import (SUPPORTED_LAYERS, _T, _activation, _activation_name, _as_ref_list, _inbound_refs,
                    _sequential_to_functional)
from .h5file import model_data_format, read_keras_h5
from .layers import run_layer
from .weights import torch_weights


def _build_module_class():
    import torch
    from torch import nn

    class _KerasGraph(nn.Module):
        """Executes a Keras functional graph; weights are torch buffers (``.to(device)`` moves them)."""

        def __init__(self, config: Dict[str, Any], weights: Dict[str, Dict[str, np.ndarray]],
                     source: str = "", fold_batchnorm: bool = True) -> None:
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
            tw = {layer["name"]: torch_weights(layer, weights.get(layer["name"], {})) for layer in self.layers_cfg}
            # BatchNormalization folded into the Conv2D before it (fold.py): one pass per feature map, not three
            self.folded: Dict[str, str] = foldable_batchnorms(self.layers_cfg, self.output_refs) if fold_batchnorm else {}
            for bn, conv in self.folded.items():
                tw[conv], tw[bn] = fold_into_conv(tw[conv], tw[bn]), {}
            for layer in self.layers_cfg:
                for short, arr in tw[layer["name"]].items():
                    self.register_buffer(self._key(layer["name"], short), torch.from_numpy(arr))
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
                if layer["name"] in self.folded:  # its arithmetic is in the convolution's weights
                    values[(layer["name"], ni)] = [args[0]]
                    continue
                out = run_layer(layer, args, lambda short, n=layer["name"]: self._w(n, short))
                values[(layer["name"], ni)] = [out]
            outs = [values[(r[0], r[1])][r[2]].keras() for r in self.output_refs]
            outs = [o.contiguous() for o in outs]
            return outs[0] if len(outs) == 1 else tuple(outs)

    return _KerasGraph


_MODULE_CLASS = None


def keras_graph_class():
    """The ``torch.nn.Module`` subclass (built on first use so that importing this module needs no torch)."""
    global _MODULE_CLASS
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _build_module_class()
    return _MODULE_CLASS


def build_keras_graph(config: Dict[str, Any], weights: Dict[str, Dict[str, np.ndarray]], source: str = "",
                      fold_batchnorm: bool = True):
    """Build the torch module from an already parsed config and weights (used by tests and the benchmark).
    ``fold_batchnorm=False`` keeps every BatchNormalization as its own multiply-add (the unfolded reference)."""
    return keras_graph_class()(config, weights, source, fold_batchnorm)


def load_keras_model(path: str | Path, device: str = "cpu", fold_batchnorm: bool = True):
    """Load a Keras 2 ``.h5`` model as a ``torch.nn.Module`` in eval mode on ``device``.

    The module maps a float32 tensor in the file's own layout (e.g. ``(N, 1, H, W)`` for channels-first)
    to the file's output (for the DOSMA U-Nets: softmax probabilities, same layout). Attributes:
    ``input_shapes`` (the stored batch input shapes), ``data_format`` ("channels_first" or
    "channels_last", from the first convolution), ``keras_info`` (keras_version, backend), ``folded``
    ({BatchNormalization: Conv2D} folded into the convolution's weights; ``fold_batchnorm=False``: none).
    """
    config, weights, info = read_keras_h5(path)
    try:
        module = build_keras_graph(config, weights, source=Path(path).name, fold_batchnorm=fold_batchnorm)
    except ModelInvalidError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelInvalidError("Could not build the network stored in %s: %s: %s"
                                % (Path(path).name, type(exc).__name__, exc)) from exc
    module.keras_info = info
    module.data_format = model_data_format(config)
    module.eval()
    return module.to(device)
