"""Per-knee QC report: ``report/report.html`` + PNGs + ``report/report.json`` (what was drawn, colour ranges)."""
from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .. import __version__
from .. import labels as L
from ..manifest import Manifest, OutputEntry

log = logging.getLogger("kneepipeline.report")

REPORT_DIR = "report"
HTML_NAME = "report.html"
SIDECAR_NAME = "report.json"
THICKNESS_PERCENTILE = 99.0     # colour bar top: this percentile of all finite bone-surface thickness
T2_RANGE_MS = (0.0, 80.0)
FIT_DISTANCE_RANGE_MM = (0.0, 2.0)
VIEW_PX = 320
BONE_VIEWS = {"femur": ["anterior", "posterior", "medial", "lateral", "inferior"],
              "tibia": ["anterior", "posterior", "medial", "lateral", "superior"],
              "patella": ["anterior", "posterior", "medial", "lateral"]}


@dataclass
class Figure:
    file: str                    # relative to report/
    title: str
    caption: str = ""
    attrs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Section:
    key: str
    title: str
    figures: List[Figure] = field(default_factory=list)
    html: str = ""               # extra HTML (tables)


class _Writer:
    def __init__(self, rep_dir: Path):
        self.rep_dir = rep_dir
        self.written: List[str] = []

    def save(self, fig, name: str, dpi: int = 100) -> str:
        import matplotlib.pyplot as plt

        from ..io.writers import atomic_write

        try:
            atomic_write(self.rep_dir / name, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
        finally:
            plt.close(fig)
        self.written.append(name)
        return name

    def text(self, name: str, text: str) -> str:
        from ..io.writers import atomic_write_text

        atomic_write_text(self.rep_dir / name, text)
        self.written.append(name)
        return name


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def thickness_range_mm(meshes: Dict[str, Any]) -> Optional[List[float]]:
    vals = [m.thickness_mm[np.isfinite(m.thickness_mm)] for b, m in meshes.items()
            if b in BONE_VIEWS and m.thickness_mm is not None]
    vals = np.concatenate(vals) if vals else np.zeros(0)
    if vals.size == 0:
        return None
    top = float(np.percentile(vals, THICKNESS_PERCENTILE))
    return [0.0, top if top > 0 else 1.0]


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def section_slices(rd, w: _Writer) -> Section:
    from .slices import draw_plane, standard_planes

    plt = _plt()
    sec = Section("slices", "Segmentation on representative slices")
    if rd.labels is None:
        sec.html = "<p>No label map in this run.</p>"
        return sec
    planes = standard_planes(rd.labels, rd.side)
    fig, axes = plt.subplots(2, 2, figsize=(10, 10))
    for ax, pl in zip(axes.ravel(), planes):
        draw_plane(ax, pl, rd.labels, rd.image)
    present = sorted(int(v) for v in np.unique(rd.labels.array[::2, ::2, ::2]) if int(v) in L.TISSUES)
    from matplotlib.lines import Line2D

    handles = [Line2D([0], [0], color=np.array(L.COLORS[L.TISSUES[c]]) / 255.0, lw=3,
                      label=L.TISSUES[c].replace("_", " ")) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    name = w.save(fig, "slices.png", dpi=90)
    bg = "the input MRI" if rd.image is not None else "the label map itself (no input image recorded)"
    sec.figures.append(Figure(name, "Label contours", "Contours drawn over %s. Planes are resampled in physical "
                              "(LPS) orientation: sagittal with anterior left, coronal/axial with the patient's right "
                              "on the left (radiological), axial with anterior up." % bg))
    return sec


def _colorbar_strip(fig, mappable_range, cmap, label, rect):
    import matplotlib as mpl

    cax = fig.add_axes(rect)
    norm = mpl.colors.Normalize(*mappable_range)
    cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    cb.set_label(label, fontsize=9)
    cb.ax.tick_params(labelsize=8)
    return cb


def section_renders(rd, w: _Writer, renderer, trange) -> Section:
    plt = _plt()
    sec = Section("renders", "Bone surfaces coloured by cartilage thickness")
    if trange is None:
        sec.html = "<p>No bone surface carries cartilage thickness.</p>"
        return sec
    for bone, views in BONE_VIEWS.items():
        m = rd.meshes.get(bone)
        if m is None:
            continue
        th = m.thickness_mm
        surf = [{"mesh": m, "scalars": th, "vmin": trange[0], "vmax": trange[1], "cmap": "viridis",
                 "color": (0.86, 0.84, 0.78), "codes": m.arrays.get("subregion")}]
        imgs = [renderer.render(surf, v, rd.side) for v in views]
        n = len(imgs)
        fig = plt.figure(figsize=(2.4 * n + 0.9, 2.75))
        for i, (img, v) in enumerate(zip(imgs, views)):
            ax = fig.add_axes([i * 2.4 / (2.4 * n + 0.9), 0.02, 2.4 / (2.4 * n + 0.9), 0.80])
            ax.imshow(img)
            ax.set_axis_off()
            ax.set_title(v, fontsize=9)
        _colorbar_strip(fig, trange, "viridis", "cartilage thickness (mm)",
                        [(2.4 * n + 0.15) / (2.4 * n + 0.9), 0.1, 0.12 / (2.4 * n + 0.9), 0.72])
        fig.suptitle("%s (%s knee); grey = no cartilage measured; lines = (sub)region borders" % (bone, rd.side),
                     fontsize=10, y=0.995)
        name = w.save(fig, "render_%s.png" % bone, dpi=100)
        finite = th[np.isfinite(th)] if th is not None else np.zeros(0)
        sec.figures.append(Figure(name, bone.capitalize(),
                                  "Colour bar %.1f-%.2f mm (0 to the %gth percentile of all bone-surface thickness); "
                                  "this surface: %d of %d vertices measured, %.2f-%.2f mm."
                                  % (trange[0], trange[1], THICKNESS_PERCENTILE, finite.size, len(th) if th is not None else 0,
                                     finite.min() if finite.size else np.nan, finite.max() if finite.size else np.nan),
                                  {"colorbar-min-mm": trange[0], "colorbar-max-mm": trange[1], "structure": bone}))
    return sec


def section_maps(rd, w: _Writer, trange) -> Section:
    from .maps2d import draw_map, femur_map, projected_map

    plt = _plt()
    sec = Section("maps", "Cartilage thickness maps")
    if trange is None:
        return sec
    maps = []
    if "femur" in rd.meshes:
        maps.append(femur_map(rd.meshes["femur"], rd.side))
    for b in ("tibia", "patella"):
        if b in rd.meshes:
            maps.append(projected_map(rd.meshes[b], b, rd.side))
    maps = [m for m in maps if m is not None and len(m.triangles)]
    if not maps:
        sec.html = "<p>No thickness-bearing surface to map.</p>"
        return sec
    widths = [1.6 if m.structure == "femur" else 1.0 for m in maps]
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * sum(widths) + 0.8, 4.6),
                             gridspec_kw={"width_ratios": widths})
    axes = np.atleast_1d(axes)
    for ax, fm in zip(axes, maps):
        draw_map(ax, fm, trange[0], trange[1])
        title = {"femur": "Femur (cylindrical unwrap about the ML axis)", "tibia": "Tibia (from superior)",
                 "patella": "Patella (articular face, from posterior)"}[fm.structure]
        ax.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    _colorbar_strip(fig, trange, "viridis", "cartilage thickness (mm)", [0.945, 0.15, 0.015, 0.7])
    name = w.save(fig, "thickness_maps.png", dpi=90)
    sec.figures.append(Figure(name, "Thickness maps", "Black lines: region boundaries; dashed white: the femorotibial "
                              "subregions (Chondrometrics codes, docs/MEASURES.md); 0 mm patches: denuded bone; "
                              "blank: no cartilage or a failed ray. Femur map: top = trochlea, bottom = posterior "
                              "condyles.",
                              {"colorbar-min-mm": trange[0], "colorbar-max-mm": trange[1]}))
    return sec


def section_bars(rd, w: _Writer) -> Section:
    from .charts import region_bars
    from .qc import COVERAGE_MIN

    plt = _plt()
    sec = Section("regions", "Regional cartilage thickness")
    regions = rd.results.get("regions") or []
    if not regions:
        sec.html = "<p>No regional results.</p>"
        return sec
    fig, ax = plt.subplots(figsize=(8, 3.6))
    region_bars(ax, regions, COVERAGE_MIN)
    fig.tight_layout()
    sec.figures.append(Figure(w.save(fig, "regions.png", dpi=90), "Mean thickness per sub-region",
                              "Numbers: mean (mm) and coverage; hatched bars have coverage below %.0f%%." % (100 * COVERAGE_MIN)))
    from ..morphometry.chondrometrics import MEASURE_NAMES

    # the standard measures have their own table (section "chondrometrics")
    sec.html = _table(regions, first=("chondrometrics", "display"),
                      skip=("name", "code", "color") + tuple(MEASURE_NAMES))
    return sec


def _section_standard(rd, w: _Writer) -> Optional[Section]:
    from .standard import section_chondrometrics

    return section_chondrometrics(rd, w, Section, Figure, _plt())


def section_t2(rd, w: _Writer) -> Optional[Section]:
    if rd.t2 is None and not rd.results.get("t2"):
        return None
    plt = _plt()
    sec = Section("t2", "T2 relaxation time")
    if rd.t2 is not None and rd.labels is not None:
        from .slices import draw_plane, standard_planes

        planes = standard_planes(rd.labels, rd.side)
        planes = [planes[0], planes[1], planes[2]]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
        mp = None
        for ax, pl in zip(axes, planes):
            info = draw_plane(ax, pl, rd.labels, rd.image, overlay=(rd.t2, "magma", T2_RANGE_MS[0], T2_RANGE_MS[1],
                                                                    L.CARTILAGES), show_contours=True)
            mp = info.get("_overlay") or mp
        fig.tight_layout(rect=(0, 0, 0.92, 1))
        _colorbar_strip(fig, T2_RANGE_MS, "magma", "T2 (ms)", [0.935, 0.15, 0.015, 0.7])
        sec.figures.append(Figure(w.save(fig, "t2.png", dpi=85), "T2 over cartilage",
                                  "T2 (ms) shown inside the cartilage labels only, %g-%g ms." % T2_RANGE_MS,
                                  {"colorbar-min-ms": T2_RANGE_MS[0], "colorbar-max-ms": T2_RANGE_MS[1]}))
    rows = rd.results.get("t2") or []
    if rows:
        sec.html = _table(rows, first=("region", "layer"))
    return sec


def _nsm_pairs(rd) -> List[tuple]:
    """(model_id, structure of the NSM mesh, original structure) for every NSM surface in the run."""
    models = sorted((rd.results.get("nsm") or {}).keys(), key=len, reverse=True)
    pairs = []
    for s in sorted(rd.meshes):
        if not s.startswith("nsm_"):
            continue
        model = next((m for m in models if s.startswith(m)), s.rsplit("_", 1)[0])
        rest = s[len(model):].lower()
        orig = "femoral_cartilage" if "cart" in rest else "femur"
        if orig in rd.meshes:
            pairs.append((model, s, orig))
    return pairs


def section_nsm(rd, w: _Writer, renderer) -> Optional[Section]:
    from .charts import bscore_scale

    nsm = rd.results.get("nsm") or {}
    pairs = _nsm_pairs(rd)
    if not nsm and not pairs:
        return None
    plt = _plt()
    sec = Section("nsm", "Neural shape model fit and B-score")
    from scipy.spatial import cKDTree

    for model, s, orig in pairs:
        rec, org = rd.meshes[s], rd.meshes[orig]
        dist = cKDTree(org.points_mm).query(rec.points_mm)[0]
        back = cKDTree(rec.points_mm).query(org.points_mm)[0]
        assd = float((dist.mean() + back.mean()) / 2)
        views = ["anterior", "posterior", "medial", "lateral"]
        surf = [{"mesh": rec, "scalars": dist, "vmin": FIT_DISTANCE_RANGE_MM[0], "vmax": FIT_DISTANCE_RANGE_MM[1],
                 "cmap": "inferno"}]
        imgs = [renderer.render(surf, v, rd.side) for v in views]
        ov = [renderer.render([{"mesh": org, "scalars": None, "color": (0.55, 0.55, 0.55)},
                               {"mesh": rec, "scalars": None, "color": (0.2, 0.5, 0.9), "opacity": 0.45}],
                              "anterior", rd.side)]
        n = len(imgs) + 1
        fig = plt.figure(figsize=(2.4 * n + 0.9, 2.75))
        tot = 2.4 * n + 0.9
        for i, (img, t) in enumerate(zip(ov + imgs, ["original (grey) vs fit (blue)"] + views)):
            ax = fig.add_axes([i * 2.4 / tot, 0.02, 2.4 / tot, 0.80])
            ax.imshow(img)
            ax.set_axis_off()
            ax.set_title(t, fontsize=8)
        _colorbar_strip(fig, FIT_DISTANCE_RANGE_MM, "inferno", "distance to original (mm)",
                        [(2.4 * n + 0.15) / tot, 0.1, 0.12 / tot, 0.72])
        fit = nsm.get(model) or {}
        key = "assd_cartilage_mm" if orig.endswith("cartilage") else "assd_bone_mm"
        rep = fit.get(key)
        fig.suptitle("%s: %s reconstruction; ASSD %s (recomputed here %.2f mm)"
                     % (model, orig.replace("_", " "), "%.2f mm" % rep if isinstance(rep, (int, float)) else "n/a", assd),
                     fontsize=9, y=0.995)
        name = w.save(fig, "nsm_%s.png" % s, dpi=100)
        sec.figures.append(Figure(name, "%s - %s" % (model, orig.replace("_", " ")),
                                  "Reconstructed surface coloured by distance to the segmented surface.",
                                  {"assd-recomputed-mm": round(assd, 4)}))
    scores = {m: (fit.get("bscore") if isinstance(fit, dict) else None) for m, fit in nsm.items()}
    scores = {m: (float(b) if isinstance(b, (int, float)) else None) for m, b in scores.items()}
    if any(v is not None for v in scores.values()):
        fig, ax = plt.subplots(figsize=(9.5, 1.5 + 0.6 * len(scores)))
        bscore_scale(ax, scores)
        fig.tight_layout()
        sec.figures.append(Figure(w.save(fig, "bscore.png", dpi=90), "B-score",
                                  "0 = mean healthy knee; the green bands are \u00b11 and \u00b12 SD of healthy knees; "
                                  "red tick = mean OA knee (reference).",
                                  {"bscore": json.dumps(scores)}))
    rows = [dict(model=m, **{k: v for k, v in f.items() if not isinstance(v, (list, dict))})
            for m, f in nsm.items() if isinstance(f, dict)]
    if rows:
        sec.html = _table(rows, first=("model",))
    return sec


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "\u2013"
    if isinstance(v, float):
        return "%.3g" % v if abs(v) < 1000 else "%.0f" % v
    return html.escape(str(v))


def _table(rows: List[Dict[str, Any]], first=(), skip=()) -> str:
    cols: List[str] = [c for c in first if any(c in r for r in rows)]
    for r in rows:
        for k, v in r.items():
            if k not in cols and k not in skip and not isinstance(v, (list, dict)):
                cols.append(k)
    head = "".join("<th>%s</th>" % html.escape(c) for c in cols)
    body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % _fmt(r.get(c)) for c in cols) for r in rows)
    return "<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>" % (head, body)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#555;font-size:.9em} figure{margin:.6em 0 1.2em 0} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444} table{border-collapse:collapse;font-size:.8em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.qc li{margin:.15em 0} .error{color:#a00;font-weight:600} .warning{color:#a60} .info{color:#357}
.ok{color:#070;font-weight:600}
"""


def render_html(rd, sections: List[Section], found, meta: Dict[str, Any]) -> str:
    title = "Knee QC report \u2013 %s" % html.escape(rd.out_dir.name)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>%s</title><style>%s</style></head>"
             "<body data-thickness-min-mm='%s' data-thickness-max-mm='%s'>"
             % (title, CSS, meta.get("thickness_range_mm", [""])[0] if meta.get("thickness_range_mm") else "",
                meta.get("thickness_range_mm", ["", ""])[1] if meta.get("thickness_range_mm") else "")]
    parts.append("<h1>%s</h1>" % title)
    lat = rd.results.get("laterality") or {}
    m = rd.manifest
    parts.append("<p class='meta'>%s knee%s \u00b7 run status: %s \u00b7 command: %s \u00b7 created %s \u00b7 "
                 "kneepipeline %s \u00b7 renderer: %s</p>"
                 % (html.escape(str(lat.get("side", "?"))),
                    (" (confidence %.2f)" % lat["confidence"]) if isinstance(lat.get("confidence"), (int, float)) else "",
                    html.escape(str(m.status)), html.escape(str(m.command)), html.escape(str(m.created)),
                    html.escape(__version__), html.escape(meta.get("renderer", ""))))
    n_err = sum(f.severity == "error" for f in found)
    n_warn = sum(f.severity == "warning" for f in found)
    parts.append("<h2 id='qc'>Quality control</h2>")
    if n_err + n_warn == 0:
        parts.append("<p class='ok'>No problems found.</p>")
    else:
        parts.append("<p>%d error(s), %d warning(s).</p>" % (n_err, n_warn))
    parts.append("<ul class='qc'>%s</ul>" % "".join(
        "<li class='%s'>[%s] %s</li>" % (f.severity, html.escape(f.category), html.escape(f.message))
        for f in sorted(found, key=lambda f: {"error": 0, "warning": 1, "info": 2}[f.severity])))
    for s in sections:
        parts.append("<h2 id='%s'>%s</h2>" % (s.key, html.escape(s.title)))
        for f in s.figures:
            attrs = "".join(" data-%s='%s'" % (k, html.escape(str(v), quote=True)) for k, v in f.attrs.items())
            parts.append("<figure%s><img src='%s' alt='%s'><figcaption><b>%s.</b> %s</figcaption></figure>"
                         % (attrs, html.escape(f.file), html.escape(f.title), html.escape(f.title), html.escape(f.caption)))
        if s.html:
            parts.append(s.html)
    if meta.get("section_errors"):
        parts.append("<h2>Report problems</h2><ul class='qc'>%s</ul>" % "".join(
            "<li class='error'>%s</li>" % html.escape(e) for e in meta["section_errors"]))
    parts.append("<p class='meta'>Built in %.1f s.</p></body></html>" % meta.get("seconds", 0))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def build_report(out_dir: Path, manifest: Manifest, progress: Optional[Callable[[float, str], None]] = None) -> Path:
    """Write ``report/report.html`` and its PNGs for the run in ``out_dir``; register them in ``manifest``.

    Every figure section is independent: one that fails is listed in the report (and report.json) and the
    rest are still drawn. Returns the HTML path. The caller writes the manifest.
    """
    from .data import load_run
    from .qc import findings
    from .render3d import Renderer

    t0 = time.time()
    out_dir = Path(out_dir)
    prog = progress or (lambda f, m: None)
    prog(0.02, "reading the run")
    rep_dir = out_dir / REPORT_DIR
    rep_dir.mkdir(parents=True, exist_ok=True)
    rd = load_run(out_dir, manifest)
    w = _Writer(rep_dir)
    trange = thickness_range_mm(rd.meshes)
    renderer = Renderer(VIEW_PX)
    sections: List[Section] = []
    errors: List[str] = []
    steps = [("slices", lambda: section_slices(rd, w)),
             ("3D renders", lambda: section_renders(rd, w, renderer, trange)),
             ("thickness maps", lambda: section_maps(rd, w, trange)),
             ("regional chart", lambda: section_bars(rd, w)),
             ("Chondrometrics", lambda: _section_standard(rd, w)),
             ("T2", lambda: section_t2(rd, w)),
             ("shape model", lambda: section_nsm(rd, w, renderer))]
    for i, (name, fn) in enumerate(steps):
        prog(0.05 + 0.85 * i / len(steps), "drawing " + name)
        try:
            s = fn()
        except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the others
            log.exception("report section %s failed", name)
            errors.append("%s: %s: %s" % (name, type(exc).__name__, exc))
            continue
        if s is not None:
            sections.append(s)
    found = findings(rd)
    meta = {"renderer": renderer.note, "thickness_range_mm": trange,
            "thickness_range_rule": "0 to the %gth percentile of finite thickness_mm over the bone meshes (%s)"
                                    % (THICKNESS_PERCENTILE, ", ".join(b for b in BONE_VIEWS if b in rd.meshes)),
            "section_errors": errors, "seconds": time.time() - t0}
    prog(0.95, "writing HTML")
    w.text(HTML_NAME, render_html(rd, sections, found, meta))
    sidecar = dict(meta, schema="kneepipeline-report/1", library_version=__version__,
                   images=[f.file for s in sections for f in s.figures],
                   figures=[dict(asdict(f), section=s.key) for s in sections for f in s.figures],
                   findings=[asdict(f) for f in found], seconds=round(time.time() - t0, 3))
    w.text(SIDECAR_NAME, json.dumps(sidecar, indent=2, allow_nan=False, default=str))
    _register(manifest, out_dir, w.written, sections)
    prog(1.0, "report written (%.1f s)" % (time.time() - t0))
    return rep_dir / HTML_NAME


def _register(manifest: Manifest, out_dir: Path, written: List[str], sections: List[Section]) -> None:
    """Replace the manifest's previous report entries by this build's; delete stale report files."""
    keep = set("%s/%s" % (REPORT_DIR, n) for n in written)
    for o in list(manifest.outputs):
        if o.step == "report" and o.path not in keep:
            p = out_dir / o.path
            if p.exists() and p.parent.name == REPORT_DIR:
                p.unlink()
    manifest.outputs = [o for o in manifest.outputs if o.step != "report"]
    titles = {f.file: f.title for s in sections for f in s.figures}
    for n in written:
        rel = "%s/%s" % (REPORT_DIR, n)
        if n.endswith(".html"):
            manifest.add(OutputEntry(path=rel, kind="report", step="report", description="Quality-control report"))
        elif n.endswith(".png"):
            manifest.add(OutputEntry(path=rel, kind="image", step="report", description=titles.get(n, n)))
        else:
            manifest.add(OutputEntry(path=rel, kind="json", step="report",
                                     description="What the report drew: colour ranges, findings"))
