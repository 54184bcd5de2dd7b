"""The layer builders of the Keras -> PyTorch loader: each supported Keras layer class as torch arithmetic
identical to Keras's (TensorFlow's asymmetric "same" padding, Conv2DTranspose output sizes, pooling that
excludes padding from averages, axis arguments mapped through the channels-first flag of :class:`_T`)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from ...errors import ModelInvalidError
from .graph import (_ELEMENTWISE_MERGE, _IDENTITY, _T, _activation, _activation_name, _common_layout,
                    _deconv_length, _pair, _same_pads, _to_cf)


def run_layer(layer: Dict[str, Any], args: List[_T], w: Callable[[str], Any]) -> _T:
    """Apply one Keras layer to its inputs with Keras's arithmetic; ``w(short)`` is the layer's torch weight
    (or None)."""
    import torch
    import torch.nn.functional as F

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
        y = F.conv2d(x, w("kernel"), w("bias"), (sh, sw), pad, (dh, dw),
                     int(c.get("groups", 1) or 1))
        out = _T(y, cf)
        return apply_activation(out, c.get("activation"))
    if cls == "Conv2DTranspose":
        x, cf = _to_cf(args[0], c.get("data_format", "channels_last"))
        kh, kw = _pair(c["kernel_size"])
        sh, sw = _pair(c.get("strides", 1))
        dh, dw = _pair(c.get("dilation_rate", 1))
        op = c.get("output_padding")
        oph, opw = (None, None) if op is None else _pair(op)
        padding = c.get("padding", "valid")
        full = F.conv_transpose2d(x, w("kernel"), None, (sh, sw), 0, 0, 1, (dh, dw))
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
        b = w("bias")
        if b is not None:
            y = y + b.view(1, -1, 1, 1)
        return apply_activation(_T(y, cf), c.get("activation"))
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
        y = torch.addcmul(w("shift").view(shape), t.x, w("scale").view(shape))  # x * scale + shift, one pass
        return _T(y, t.cf)
    if cls == "Activation":
        return apply_activation(args[0], c.get("activation"))
    if cls == "ReLU":
        t = args[0]
        x = t.x
        slope = float(c.get("negative_slope", 0.0) or 0.0)
        thr = float(c.get("threshold", 0.0) or 0.0)
        maxv = c.get("max_value")
        if slope == 0.0 and thr == 0.0 and maxv is None:  # the plain ReLU: one pass
            return _T(F.relu(x), t.cf)
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
        alpha = w("alpha").unsqueeze(0)  # keras layout incl. batch
        if t.cf:
            alpha = alpha.permute(0, 3, 1, 2)
        x = t.x
        if x.dim() >= 2 and alpha.numel() == x.shape[1] and alpha.shape[1] == x.shape[1]:
            return _T(F.prelu(x, alpha.reshape(-1)), t.cf)  # one slope per stored channel: one pass
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
        y = F.linear(x, w("kernel"), w("bias"))
        return apply_activation(_T(y), c.get("activation"))
    raise ModelInvalidError("Keras layer %r of class %s is not supported." % (name, cls))  # pragma: no cover

def apply_activation(t: _T, act: Any) -> _T:
    name = _activation_name(act)
    if name in (None, "linear"):
        return t
    return _T(_activation(name, t.x, t.axis(-1)), t.cf)
