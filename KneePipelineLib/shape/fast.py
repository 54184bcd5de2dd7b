"""Fast evaluation of a frozen triplanar decoder for latent fitting (same maths as ``decoder.query``).

Only the latent is optimised, so the decoder's weights never need gradients. What this module does
differently from plain autograd over ``TriplanarDecoder.query`` (measured on the full-size published
architecture, 20 000 points per step, 1 CPU thread; see bench/bench_nsm.py):

* **Bilinear sampling as one weighted gather.** A sample point's feature is the sum over the three planes
  of the bilinear blend of 4 texels: 12 (texel, weight) pairs per point that depend on the point only.
  They are computed once for every fitting vertex (:func:`plane_corners`) and the features of a batch are
  one ``embedding_bag`` over the channels-last planes -- (N, F) directly, no (3, F, N) transpose/copy, and
  its backward is a dense scatter into the plane gradient. Same formula as ``grid_sample`` (bilinear,
  align_corners=True, border padding on coordinates already clamped to [-1, 1]).
* **A hand-written backward for the SDF MLP** (:class:`FrozenMlp`): gradients flow to the features only
  (no weight gradients, no gradient for the xyz columns of the first layer), ReLU masks are read from the
  stored activations, and the (N, 512) activation and gradient buffers are reused from step to step.
  Fresh 40 MB tensors every step cost page faults (glibc hands large blocks back to the OS): in the
  profile the last layer's (N, 2) x (2, 512) product took 28 ms, the bias copies of ``addmm`` 18 ms each.
* **Optional bfloat16** (``precision="bf16"``): the MLP's matrix products and the plane generator's
  convolutions in bf16 with fp32 accumulation (oneDNN; AVX512_BF16 / AMX where the CPU has them), the
  loss, clamp and Adam in fp32. Not exact: off by default; bench/bench_nsm.py reports its SDF error and
  the fitted-shape ASSD next to fp32.

Measured (bench/results/nsm-20261127-*.json, AMD EPYC with AVX512_BF16, no AMX, quiet 2 cores; one step
= 89 GFLOP: plane generator 21 GFLOP forward + the same backward, MLP 23.7 GFLOP forward + the same
backward): plain autograd 1.44 / 0.74 s per step (1 / 2 threads), this path 1.07 / 0.6 s (plane generator
at ~100 GFLOP/s per core, MLP ~85: the machine's fp32 GEMM rate, so fp32 has little left to gain), bf16
0.54 / 0.29 s. bf16 on our small trained model: same early-stopping step, ASSD within 0.0002 mm, latent
18x closer to the fp32 latent than two fp32 seeds are to each other; on the full-size architecture (random
weights) the latent gradient differs by ~3 %, against ~24 % between two draws of the 10 000 vertices.
torch.compile of the plain step: 29 s to compile and slower per step (1.7 s) -- not used.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

PRECISIONS = ("fp32", "bf16")


def plane_corners(arch, xyz):
    """(idx (N, 12) int64, weights (N, 12) float32) of the bilinear texels of the xz, yz and xy planes.

    ``idx`` indexes the planes flattened channels-last, (3 * R * R, F) with row p * R * R + row_y * R + col_x;
    for ``sum_features=False`` models the three groups of 4 are kept apart by :func:`gather_features`.
    """
    import torch

    r = arch.plane_size
    p = (xyz.float() / arch.coord_scale).clamp(-1.0, 1.0)
    g = (p + 1.0) * (0.5 * (r - 1))                       # align_corners=True: -1 -> 0, 1 -> r-1
    g = g.clamp(0.0, float(r - 1))
    i0 = g.floor().clamp(max=r - 2) if r > 1 else g.floor()
    f = g - i0                                             # in [0, 1]
    i0 = i0.long()
    idx, w = [], []
    for k, (u, v) in enumerate(((0, 2), (1, 2), (0, 1))):  # (width coord, height coord) per plane
        base = k * r * r
        for dv in (0, 1):
            for du in (0, 1):
                idx.append(base + (i0[:, v] + dv) * r + (i0[:, u] + du))
                wu = f[:, u] if du else 1.0 - f[:, u]
                wv = f[:, v] if dv else 1.0 - f[:, v]
                w.append(wu * wv)
    return torch.stack(idx, 1), torch.stack(w, 1)


def gather_features(arch, planes, idx, w):
    """(N, F) summed (or (N, 3F) concatenated) plane features from :func:`plane_corners` output."""
    import torch
    import torch.nn.functional as F

    n_pl, fch, r, _ = planes.shape
    flat = planes.permute(0, 2, 3, 1).reshape(n_pl * r * r, fch)        # channels last
    return _gather_flat(arch, flat, idx, w.to(flat.dtype))


def _gather_flat(arch, flat, idx, w):
    import torch
    import torch.nn.functional as F

    if arch.sum_features:
        return F.embedding_bag(idx, flat, per_sample_weights=w, mode="sum")
    return torch.cat([F.embedding_bag(idx[:, 4 * k:4 * k + 4], flat, per_sample_weights=w[:, 4 * k:4 * k + 4],
                                      mode="sum") for k in range(3)], 1)


class _Buffers:
    def __init__(self, n, widths, dtype, device):
        import torch

        self.n = n
        self.h = [torch.empty(n, c, dtype=dtype, device=device) for c in widths[:-1]]   # input + hidden outs
        self.g = [torch.empty(n, c, dtype=dtype, device=device) for c in widths[1:-1]]  # hidden grads


class FastEvaluator:
    """Frozen-decoder evaluation for fitting: ``planes(latent)`` and ``sdf(planes, idx, w, xyz)``."""

    def __init__(self, decoder, precision: str = "fp32"):
        import torch

        if precision not in PRECISIONS:
            from ..errors import ConfigurationError
            raise ConfigurationError("Unknown NSM precision %r." % precision, hint="Use fp32 or bf16.")
        self.decoder = decoder
        self.arch = decoder.arch
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.weights = [lin.weight.detach().to(self.dtype).contiguous() for lin in decoder.mlp]
        self.biases = [lin.bias.detach().to(self.dtype).contiguous() for lin in decoder.mlp]
        self.widths = [self.arch.mlp_in] + [w.shape[0] for w in self.weights]
        self._pool: List[_Buffers] = []

    # -- buffers ---------------------------------------------------------------------------------------
    def _take(self, n, device):
        for k, b in enumerate(self._pool):
            if b.n == n:
                return self._pool.pop(k)
        return _Buffers(n, self.widths, self.dtype, device)

    def _give(self, b):
        self._pool = [b] + [x for x in self._pool if x.n != b.n][:1]

    # -- evaluation ------------------------------------------------------------------------------------
    def planes(self, latent):
        import torch

        if self.precision == "bf16":
            with torch.autocast(latent.device.type, dtype=torch.bfloat16):
                return self.decoder.planes(latent).float()
        return self.decoder.planes(latent)

    def corners(self, xyz):
        return plane_corners(self.arch, xyz)

    def evaluate(self, planes, pts, chunk: int = 16384):
        """(N, n_objects) float32 numpy SDF of (N, 3) numpy points, no gradients, buffers reused."""
        import numpy as np
        import torch

        n_obj = self.widths[-1]
        out = np.empty((len(pts), n_obj), np.float32)
        dev = planes.device
        with torch.inference_mode():
            pl = planes.to(self.dtype)
            n_pl, fch, r, _ = pl.shape
            flat = pl.permute(0, 2, 3, 1).reshape(n_pl * r * r, fch).contiguous()
            bufs = None
            for i in range(0, len(pts), chunk):
                x = torch.from_numpy(np.ascontiguousarray(pts[i:i + chunk], np.float32)).to(dev)
                n = len(x)
                if bufs is None or bufs.n != n:
                    bufs = _Buffers(n, self.widths, self.dtype, dev)
                idx, w = self.corners(x)
                h = bufs.h[0]
                h[:, :fch if self.arch.sum_features else 3 * fch].copy_(
                    _gather_flat(self.arch, flat, idx, w.to(self.dtype)))
                h[:, -3:].copy_(x)
                for k in range(len(self.weights) - 1):
                    torch.addmm(self.biases[k], h, self.weights[k].t(), out=bufs.h[k + 1])
                    h = bufs.h[k + 1].relu_()
                y = torch.addmm(self.biases[-1], h, self.weights[-1].t()).tanh_()
                out[i:i + n] = y.float().cpu().numpy()
        return out

    def sdf(self, planes, idx, w, xyz):
        """(N, n_objects) float32 SDF; differentiable with respect to ``planes`` (hence the latent)."""
        feat = gather_features(self.arch, planes, idx, w)
        return FrozenMlp.apply(feat, xyz, self)


def _frozen_mlp():
    import torch

    class _FrozenMlp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, feat, xyz, ev):
            n, fdim = feat.shape
            bufs = ev._take(n, feat.device)
            h = bufs.h[0]
            h[:, :fdim].copy_(feat)
            h[:, fdim:].copy_(xyz)
            for i in range(len(ev.weights) - 1):
                out = bufs.h[i + 1]
                torch.addmm(ev.biases[i], h, ev.weights[i].t(), out=out)
                out.relu_()
                h = out
            y = torch.addmm(ev.biases[-1], h, ev.weights[-1].t()).tanh_()
            ctx.ev, ctx.bufs, ctx.y, ctx.fdim, ctx.fdtype = ev, bufs, y, fdim, feat.dtype
            return y.float()

        @staticmethod
        def backward(ctx, gy):
            ev, bufs, y = ctx.ev, ctx.bufs, ctx.y
            ws = ev.weights
            g = (gy.to(y.dtype) * (1.0 - y * y))                       # tanh'
            for i in range(len(ws) - 1, 0, -1):
                out = bufs.g[i - 1]
                torch.mm(g, ws[i], out=out)
                torch.ops.aten.threshold_backward.grad_input(out, bufs.h[i], 0, grad_input=out)   # ReLU mask
                g = out
            gfeat = torch.mm(g, ws[0][:, :ctx.fdim]).to(ctx.fdtype)
            ev._give(bufs)
            ctx.bufs = ctx.y = None
            return gfeat, None, None

    return _FrozenMlp


class _Lazy:
    _cls = None

    def apply(self, *a):
        if _Lazy._cls is None:
            _Lazy._cls = _frozen_mlp()
        return _Lazy._cls.apply(*a)


FrozenMlp = _Lazy()


def evaluator(decoder, precision: str = "fp32") -> FastEvaluator:
    """The decoder's cached :class:`FastEvaluator` for ``precision`` (weights are frozen after loading)."""
    cache = decoder.__dict__.setdefault("_fast_evaluators", {})
    if precision not in cache:
        cache[precision] = FastEvaluator(decoder, precision)
    return cache[precision]
