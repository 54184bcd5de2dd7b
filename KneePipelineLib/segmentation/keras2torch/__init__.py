"""Keras 2 ``.h5`` models (functional API) run on PyTorch, without TensorFlow.

``h5file`` reads/writes the files (h5py) and checks a 2D model file against its registry entry; ``graph``
describes the layer graph (supported layers, inbound references, TensorFlow padding rules); ``weights`` maps
Keras weight arrays to torch layouts; ``layers`` executes each layer class; ``module`` is the
``torch.nn.Module`` and :func:`load_keras_model`. The public names are re-exported by
``KneePipelineLib.segmentation.keras_h5``.
"""
