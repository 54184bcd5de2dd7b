"""``kneepipeline t2``: T2 maps from multi-echo spin echo or qDESS, and regional T2 from a label map."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

NAME = "t2"
HELP = "T2 map from a multi-echo spin-echo series (or qDESS), with regional and deep/superficial T2"
DESCRIPTION = (HELP + ". Writes t2_ms.nii.gz, t2_r2.nii.gz, t2_s0.nii.gz, t2_valid.nii.gz, t2_params.json and, "
               "with --labels or --regions, t2_regions.csv/.json (strict JSON: null, never NaN).")

USAGE = "--echoes PATH [PATH ...] --out DIR [--labels LABELS] [options]"
EXAMPLES = [
    "kneepipeline t2 --echoes mese_t2_dicom/ --out t2/knee01",
    "kneepipeline t2 --echoes echoes_4d.nii.gz --echo-times-ms 10 20 30 40 --labels knee_labels.nii.gz --out t2/k1",
    "kneepipeline t2 --echoes qdess_s_plus.nii.gz qdess_s_minus.nii.gz --qdess --tr-ms 18 --te-ms 5 "
    "--flip-deg 20 --out t2/k1",
]
ROW_FIELDS = ["region", "code", "layer", "t2_mean_ms", "t2_std_ms", "t2_median_ms", "n_voxels"]


def add_arguments(p) -> None:
    from ._common import INPUT, OUTPUT, group

    g = group(p, INPUT)
    g.add_argument("--echoes", nargs="+", required=True, metavar="PATH",
                   help="multi-echo DICOM folder or zip, a 4D NIfTI/NRRD, or one 3D file per echo")
    g.add_argument("--echo-times-ms", nargs="+", type=float, metavar="TE",
                   help="echo times in ms (needed for NIfTI/NRRD; overrides DICOM)")
    g.add_argument("--labels", metavar="LABELS", help="tissue label map (rows per cartilage tissue, deep/superficial)")
    g.add_argument("--label-convention", default="dosma", help="dosma | nnunet | pymskt | FILE.json (default dosma)")
    g.add_argument("--regions", metavar="REGIONS", help="sub-region map in canonical codes (11-15, 3, 4, 1; bones 7-9)")
    group(p, OUTPUT).add_argument("--out", required=True, metavar="DIR", help="output folder")
    g = p.add_argument_group("MESE fit")
    g.add_argument("--keep-first-echo", action="store_true", help="fit the first echo too (default: dropped)")
    g.add_argument("--no-refine", action="store_true", help="log-linear fit only (no noise-floor refinement)")
    g.add_argument("--r2-min", type=float, default=0.7, help="minimum R² of a valid voxel (default 0.7)")
    g.add_argument("--t2-max-ms", type=float, default=100.0, help="upper end of the valid T2 range (default 100)")
    g.add_argument("--noise-sigma", type=float, help="noise σ (default: estimated from the background)")
    q = p.add_argument_group("qDESS")
    q.add_argument("--qdess", action="store_true", help="the two echoes are a qDESS pair (S+, S-)")
    q.add_argument("--tr-ms", type=float)
    q.add_argument("--te-ms", type=float)
    q.add_argument("--flip-deg", type=float)
    q.add_argument("--tg-us", type=float, help="gradient duration (GE tag 0019,10B7)")
    q.add_argument("--gl-area", type=float, help="gradient area (GE tag 0019,10B6)")
    q.add_argument("--t1-ms", type=float, help="assumed T1 (default 1200 ms)")
    q.add_argument("--require-diffusion-terms", action="store_true",
                   help="fail instead of using the low-spoiling estimator when Tg/GlArea are missing")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return _clean(v.item())
        except (ValueError, AttributeError):
            pass
    return v


def _atomic_text(path: Path, text: str) -> None:
    from ..manifest import atomic_write_text

    atomic_write_text(str(path), text)


def main(args, progress) -> int:
    import numpy as np

    from .. import __version__
    from .. import labels as L
    from .. import t2 as T2
    from ..errors import ConfigurationError, OutputUnwritableError, T2Error
    from ..io.readers import read_labels, write_volume

    progress.set_steps([("read", 1), ("fit", 4), ("regions", 2), ("write", 1)])
    progress.hello(NAME, __version__)
    out = Path(args.out)
    for src in list(args.echoes) + [args.labels, args.regions]:
        if src and out.resolve() == Path(src).resolve():
            raise OutputUnwritableError("The output folder is the input %s." % src)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputUnwritableError("Cannot create the output folder %s: %s" % (out, exc)) from exc

    progress.step("read", 0.0, "reading echoes")
    echoes = T2.load_echoes(args.echoes, args.echo_times_ms)
    progress.log("read %d echoes (TE %s ms), grid %s" % (echoes.n_echo, ", ".join("%g" % t for t in echoes.echo_times_ms),
                                                         "x".join(map(str, echoes.geometry.shape_ijk))))
    progress.step("fit", 0.0, "fitting T2")
    if args.qdess:
        if echoes.n_echo != 2:
            raise T2Error("qDESS needs exactly two echoes; got %d." % echoes.n_echo)
        params = T2.qdess_params(echoes.source, tr_ms=args.tr_ms, te_ms=args.te_ms, flip_deg=args.flip_deg,
                                 tg_us=args.tg_us, gl_area=args.gl_area, t1_ms=args.t1_ms)
        maps = T2.qdess_t2(echoes.echo(0), echoes.echo(1), params, t2_range_ms=(0.0, args.t2_max_ms),
                           allow_fallback=not args.require_diffusion_terms)
        if not params.has_diffusion_terms:
            progress.warning("qDESS: gradient duration/area (GE tags 0019,10B7 / 0019,10B6) not available; "
                             "used the low-spoiling estimator without the diffusion term.")
    else:
        if any(v is not None for v in (args.tr_ms, args.te_ms, args.flip_deg, args.tg_us, args.gl_area)):
            raise ConfigurationError("--tr-ms/--te-ms/--flip-deg/--tg-us/--gl-area are qDESS options.",
                                     hint="Add --qdess for a qDESS pair, or leave them out for MESE.")
        maps = T2.fit_mese(echoes, drop_first_echo=not args.keep_first_echo, refine=not args.no_refine,
                           r2_min=args.r2_min, t2_range_ms=(0.0, args.t2_max_ms), noise_sigma=args.noise_sigma)
    progress.step("fit", 1.0, "%s: %d valid voxels" % (maps.method, int(np.sum(maps.valid.array))))

    rows = None
    regions_note = None
    if args.labels or args.regions:
        progress.step("regions", 0.0, "regional T2")
        if args.regions:
            regions = read_labels(args.regions)
            regions_note = "regions map given (--regions)"
        else:
            vol = read_labels(args.labels)
            table = L.load_convention(args.label_convention)
            vol = vol.with_array(L.remap(vol.array, table, args.label_convention))
            regions = None
            try:
                from ..morphometry import analyze_labels  # noqa: F401
            except ImportError:
                analyze_labels = None
            if analyze_labels is not None:
                try:
                    res = analyze_labels(vol)
                    regions = res.regions_volume
                    regions_note = "sub-regions from morphometry.analyze_labels"
                except Exception as exc:  # noqa: BLE001 - fall back to tissue rows, say why
                    progress.warning("sub-regions unavailable (%s); T2 reported per cartilage tissue" % exc)
            if regions is None:
                regions = vol
                regions_note = regions_note or "per cartilage tissue label (no sub-region map)"
        if not maps.t2_ms.same_geometry(regions, tol=1e-3):
            maps = T2.resample_to(maps, regions)
            progress.log("T2 maps resampled to the label grid (linear for T2, nearest for the mask)")
        rows, _ = T2.regional_t2(maps, regions)
        progress.step("regions", 1.0, "%d rows" % len(rows))

    progress.step("write", 0.0, "writing outputs")
    # NaN does not survive every NIfTI reader: invalid voxels are written as 0 (t2_valid.nii.gz is the mask)
    write_volume(maps.t2_ms.with_array(np.nan_to_num(maps.t2_ms.array, nan=0.0).astype(np.float32)),
                 out / "t2_ms.nii.gz")
    write_volume(maps.r2, out / "t2_r2.nii.gz")
    write_volume(maps.s0, out / "t2_s0.nii.gz")
    write_volume(maps.valid.with_array(np.asarray(maps.valid.array, dtype=np.uint8)), out / "t2_valid.nii.gz")
    info = {"t2_ms_file": "T2 in ms; 0 where no valid fit (see t2_valid.nii.gz)", "method": maps.method, "params": maps.params, "source": echoes.source, "regions": regions_note}
    _atomic_text(out / "t2_params.json", json.dumps(_clean(info), indent=2, allow_nan=False))
    written = ["t2_ms.nii.gz", "t2_r2.nii.gz", "t2_s0.nii.gz", "t2_valid.nii.gz", "t2_params.json"]
    if rows is not None:
        clean_rows = _clean(rows)
        from ..t2.regional import T2_STATS_RANGE_MS

        _atomic_text(out / "t2_regions.json", json.dumps({"method": maps.method, "regions_from": regions_note,
                                                          "t2_stats_range_ms": list(T2_STATS_RANGE_MS),
                                                          "rows": clean_rows}, indent=2, allow_nan=False))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in clean_rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_FIELDS})
        _atomic_text(out / "t2_regions.csv", buf.getvalue())
        written += ["t2_regions.json", "t2_regions.csv"]
    progress.step("write", 1.0, "done")
    progress.result(out_dir=str(out), files=written)
    progress.say(_summary(maps, echoes, rows, out, written, len(progress.warnings)))
    return 0


def _summary(maps, echoes, rows, out, written, n_warnings) -> str:
    """Method, echoes, valid voxels, median T2 and the per-tissue means, where the files are."""
    import numpy as np

    from ._summary import files_summary

    valid = np.asarray(maps.valid.array, dtype=bool)
    t2 = np.asarray(maps.t2_ms.array)[valid]
    extra = ["%d echoes (TE %s ms); %d valid voxels, median T2 %s ms" % (
        echoes.n_echo, ", ".join("%g" % t for t in echoes.echo_times_ms), int(valid.sum()),
        "%.1f" % float(np.median(t2)) if t2.size else "n/a")]
    whole = [r for r in (rows or []) if r.get("layer", "all") == "all" and r.get("t2_mean_ms") is not None]
    if whole:
        extra.append("T2, mean ms: " + ", ".join("%s %.1f" % (r.get("region"), r["t2_mean_ms"]) for r in whole[:8]))
    return files_summary("kneepipeline t2: %s fit" % maps.method, str(out), written, n_warnings, extra)
