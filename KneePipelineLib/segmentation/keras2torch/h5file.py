"""Keras 2 full-model ``.h5`` files read and written with h5py (no TensorFlow), and the folder check.

A Keras 2 full-model ``.h5`` file holds the architecture as a JSON string in the root attribute
``model_config`` and the weights in the group ``model_weights``: one sub-group per layer (attribute
``layer_names`` lists them) whose attribute ``weight_names`` lists dataset paths such as
``conv2d/kernel:0`` relative to that sub-group.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ...errors import ModelInvalidError


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


def check_keras_file(path: str | Path, entry: Any = None) -> Dict[str, Any]:
    """What ``kneepipeline models --check`` says about a 2D model file: a Keras 2 model whose input size and
    number of classes match the registry entry (``config["size"]``; 10 classes for the DOSMA numbering).
    Reads only the architecture (no torch); raises :class:`ModelInvalidError` naming the mismatch."""
    config, _, info = read_keras_h5(path)
    layers = config.get("config", {}).get("layers", [])
    fmt = model_data_format(config)
    shape = None
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            c = layer.get("config", {})
            shape = c.get("batch_input_shape") or c.get("batch_shape")
            break
    hw = None
    if shape and len(shape) == 4:
        hw = list(shape[2:4] if fmt == "channels_first" else shape[1:3])
    classes = None
    for layer in reversed(layers):
        f = layer.get("config", {}).get("filters")
        if f:
            classes = int(f)
            break
    want = list((getattr(entry, "config", None) or {}).get("size") or []) if entry is not None else []
    name = Path(path).name
    if want and hw and all(v is not None for v in hw) and [int(v) for v in hw] != [int(v) for v in want]:
        raise ModelInvalidError("%s takes %s x %s slices, but registry model %s expects %s x %s (rows x columns)."
                                % (name, hw[0], hw[1], entry.id, want[0], want[1]),
                                hint="This file is another plane's model, or not the registry's file.")
    if entry is not None and classes is not None and getattr(entry, "label_convention", "dosma") == "dosma" \
            and classes != 10:
        raise ModelInvalidError("%s predicts %d classes; the DOSMA knee models predict 10 (background + 9 "
                                "tissues)." % (name, classes), hint="This file is a different model.")
    return {"file": name, "keras_version": info.get("keras_version"), "data_format": fmt,
            "input_size": hw, "classes": classes}
