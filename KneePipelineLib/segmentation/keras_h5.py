"""Run Keras 2 ``.h5`` models (functional API) on PyTorch, without TensorFlow -- the public entry points.

:func:`load_keras_model` reads a Keras 2 full-model ``.h5`` file with h5py and builds a ``torch.nn.Module``
that executes the layer graph (``inbound_nodes``) with the same arithmetic as Keras, including TensorFlow's
asymmetric "same" padding and the output-size rules of ``Conv2DTranspose``. The module takes and returns
tensors in the file's own layout (``(N, 1, H, W)`` channels-first, ``(N, H, W, 1)`` channels-last).

The implementation lives in :mod:`.keras2torch` along its seams: ``h5file`` (reading / writing the file,
the ``models --check`` file check), ``graph`` (layer-graph description, padding rules, activations),
``weights`` (Keras weights -> torch layouts), ``layers`` (one function per layer class), ``module`` (the
``torch.nn.Module``). Supported layer classes: :data:`SUPPORTED_LAYERS`; anything else raises
:class:`~KneePipelineLib.errors.ModelInvalidError` naming the layer and its class.
"""
from __future__ import annotations

from .keras2torch.graph import SUPPORTED_LAYERS
from .keras2torch.h5file import (check_keras_file, layer_config, model_config, model_data_format, read_keras_h5,
                                 save_keras_h5)
from .keras2torch.module import build_keras_graph, keras_graph_class, load_keras_model

__all__ = ["SUPPORTED_LAYERS", "check_keras_file", "layer_config", "model_config", "model_data_format",
           "read_keras_h5", "save_keras_h5", "build_keras_graph", "keras_graph_class", "load_keras_model"]
