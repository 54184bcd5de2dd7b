"""QC report: built from a real run on the sample label map, headless; cohort report from real numbers."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ["slices.png", "render_femur.png", "render_tibia.png", "render_patella.png", "thickness_maps.png",
            "regions.png"]
PIXEL_STD_FLOOR = 8.0   # grey-level standard deviation (0-255) below which an image counts as blank


def _env_headless(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def real_run(sample_analyze_run, tmp_path_factory):
    """The session's real `analyze` of the sample label map (conftest ``sample_analyze_run``), copied (tests
    only read that folder), then build_report in this process (no DISPLAY) over the copy."""
    import shutil

    out = tmp_path_factory.mktemp("run") / "knee"
    shutil.copytree(sample_analyze_run["dir"], out)
    from KneePipelineLib.manifest import load_manifest
    from KneePipelineLib.report import build_report

    os.environ.pop("DISPLAY", None)
    manifest = load_manifest(str(out))
    t0 = time.process_time()
    html_path = build_report(out, manifest)
    cpu_s = time.process_time() - t0
    manifest.write(str(out))
    return out, manifest, html_path, cpu_s


def _read_png(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG", path
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=float)


def _bone_thickness(run_dir):
    from KneePipelineLib.report.data import read_mesh

    vals = []
    for b in ("femur", "tibia", "patella"):
        p = next(iter(sorted((run_dir / "meshes").glob(b + ".*"))), None)
        if p is not None:
            th = read_mesh(p, b).thickness_mm
            if th is not None:
                vals.append(th[np.isfinite(th)])
    return np.concatenate(vals)


def _referenced(html_text):
    return re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html_text)


# ----------------------------------------------------------------------------------------------
@pytest.mark.slow   # shares one real `analyze` run (~10 s CPU) + report build
def test_report_images_exist_are_png_and_not_blank(real_run):
    out, manifest, html_path, cpu_s = real_run
    rep = out / "report"
    for name in EXPECTED:
        img = _read_png(rep / name)
        assert img.shape[0] >= 150 and img.shape[1] >= 150, name
        assert img.std() > PIXEL_STD_FLOOR, "%s looks blank (std %.1f)" % (name, img.std())
    side = json.loads((rep / "report.json").read_text())
    assert side["section_errors"] == []
    assert set(EXPECTED) <= set(side["images"])
    assert cpu_s < 30, "report took %.1f CPU s" % cpu_s


@pytest.mark.slow   # shares one real `analyze` run (~10 s CPU) + report build
def test_html_references_only_existing_files_and_manifest_lists_them(real_run):
    out, manifest, html_path, _ = real_run
    text = html_path.read_text(encoding="utf-8")
    refs = _referenced(text)
    assert len(refs) >= len(EXPECTED)
    for r in refs:
        assert not re.match(r"^[a-z]+:", r), "external reference %s" % r
        assert (html_path.parent / r).is_file(), r
    on_disk = json.loads((out / "manifest.json").read_text())
    listed = {o["path"]: o["kind"] for o in on_disk["outputs"]}
    assert listed.get("report/report.html") == "report"
    for r in refs:
        assert listed.get("report/" + r) == "image", r
    for p, kind in listed.items():
        assert (out / p).is_file(), p


@pytest.mark.slow   # shares one real `analyze` run (~10 s CPU) + report build
def test_colour_bar_range_matches_the_thickness_data(real_run):
    out, manifest, html_path, _ = real_run
    th = _bone_thickness(out)
    assert th.size > 1000
    side = json.loads((out / "report" / "report.json").read_text())
    lo, hi = side["thickness_range_mm"]
    assert lo == 0.0 and lo <= np.nanmin(th)
    assert hi == pytest.approx(np.nanpercentile(th, 99), rel=1e-6)
    assert np.nanmax(th) >= hi > np.nanmedian(th)
    text = html_path.read_text(encoding="utf-8")
    found = re.findall(r"data-colorbar-max-mm='([0-9.eE+-]+)'", text)
    assert len(found) >= 4      # three bone renders + the maps
    assert all(float(v) == pytest.approx(hi) for v in found)


@pytest.mark.slow   # shares one real `analyze` run (~10 s CPU) + report build
def test_matplotlib_fallback_renders_thickness(real_run):
    """Where VTK cannot render offscreen, the fallback still draws the bone with thickness colours."""
    from KneePipelineLib.report.data import read_mesh
    from KneePipelineLib.report.render3d import render_matplotlib

    out, _, _, _ = real_run
    tib = read_mesh(next((out / "meshes").glob("tibia.*")), "tibia")
    img = render_matplotlib([{"mesh": tib, "scalars": tib.thickness_mm, "vmin": 0.0, "vmax": 4.0}], "superior",
                            "right", size=200).astype(float)
    assert img.shape[:2] == (200, 200) and img.std() > PIXEL_STD_FLOOR
    # viridis colours (blue/green dominant over red) on the plateaus; bone colour elsewhere
    coloured = (img[..., 1] > img[..., 0] + 30) | (img[..., 2] > img[..., 0] + 30)
    assert coloured.sum() > 500


@pytest.mark.slow   # shares one real `analyze` run (~10 s CPU) + report build
def test_report_command_headless_with_t2_and_shape_model(real_run, tmp_path):
    """`kneepipeline report RUN_DIR` (no DISPLAY) on a run that also has a T2 map (analytic: 20 + 5 * label
    ms) and an NSM surface (the femur displaced 0.5 mm along its normals): the T2 and NSM figures are drawn,
    ASSD > 1 mm is flagged, the B-score scale is drawn, and manifest.json lists the new files."""
    import vtk

    from KneePipelineLib.io.readers import read_labels, write_volume
    from KneePipelineLib.manifest import OutputEntry, load_manifest

    out, _, _, _ = real_run
    run2 = tmp_path / "knee"
    shutil.copytree(out, run2)
    shutil.rmtree(run2 / "report")
    m = load_manifest(str(run2))
    lab_name = "segmentation.nii.gz" if (run2 / "segmentation.nii.gz").exists() else "labels.nii.gz"
    lab = read_labels(run2 / lab_name)
    write_volume(lab.with_array((20.0 + 5.0 * lab.array).astype(np.float32)), run2 / "t2_ms.nii.gz")
    m.add(OutputEntry("t2_ms.nii.gz", "volume", step="t2", units={"t2": "ms"}))
    femur_path = next((run2 / "meshes").glob("femur.*"))
    r = vtk.vtkXMLPolyDataReader() if femur_path.suffix == ".vtp" else vtk.vtkPolyDataReader()
    r.SetFileName(str(femur_path))
    n = vtk.vtkPolyDataNormals()
    n.SetInputConnection(r.GetOutputPort())
    n.SplittingOff()
    n.Update()
    n.GetOutput().GetPointData().SetActiveVectors("Normals")
    warp = vtk.vtkWarpVector()
    warp.SetInputData(n.GetOutput())
    warp.SetScaleFactor(0.5)
    warp.Update()
    wr = vtk.vtkXMLPolyDataWriter()
    wr.SetFileName(str(run2 / "meshes" / "nsm_bone_only_femur.vtp"))
    wr.SetInputData(warp.GetOutput())
    wr.Write()
    m.add(OutputEntry("meshes/nsm_bone_only_femur.vtp", "mesh", step="nsm", structure="nsm_bone_only_femur"))
    m.write(str(run2))
    res = json.loads((run2 / "results.json").read_text())
    res["nsm"] = {"nsm_bone_only": {"bscore": 1.2, "assd_bone_mm": 1.4}}
    (run2 / "results.json").write_text(json.dumps(res))

    proc = subprocess.run([sys.executable, "-m", "KneePipelineLib", "--quiet-progress", "report", str(run2)],
                          cwd=str(ROOT), env=_env_headless(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = run2 / "report"
    for name in EXPECTED + ["t2.png", "bscore.png", "nsm_nsm_bone_only_femur.png"]:
        assert _read_png(rep / name).std() > PIXEL_STD_FLOOR, name
    side = json.loads((rep / "report.json").read_text())
    assert side["section_errors"] == []
    assert any(f["category"] == "fit quality" and "1.40" in f["message"] for f in side["findings"])
    nsm_fig = next(f for f in side["figures"] if f["file"] == "nsm_nsm_bone_only_femur.png")
    assert 0.3 < nsm_fig["attrs"]["assd-recomputed-mm"] < 0.7     # displaced by 0.5 mm along the normals
    t2_fig = next(f for f in side["figures"] if f["file"] == "t2.png")
    assert t2_fig["attrs"]["colorbar-max-ms"] == 80.0
    listed = {o["path"]: o["kind"] for o in json.loads((run2 / "manifest.json").read_text())["outputs"]}
    assert listed["report/report.html"] == "report" and listed["report/t2.png"] == "image"
    assert listed["report/nsm_nsm_bone_only_femur.png"] == "image"
    text = (rep / "report.html").read_text()
    for ref in _referenced(text):
        assert (rep / ref).is_file()


@pytest.mark.slow   # shares one real `analyze` run (~10 s CPU) + report build
def test_cohort_report_flags_outliers_and_failures(real_run, tmp_path):
    from KneePipelineLib.pipeline import flatten_results
    from KneePipelineLib.report import build_cohort_report

    out, _, _, _ = real_run
    row = flatten_results(json.loads((out / "results.json").read_text()))
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        r = {"id": "knee%02d" % i, "status": "complete", "error_category": "", "error_message": ""}
        for k, v in row.items():
            r[k] = v * rng.normal(1.0, 0.05) if isinstance(v, float) else v
        r["nsm_bone_only_bscore"] = float(rng.normal(0.5, 1.0))
        rows.append(r)
    rows[3]["tibia_medial_thickness_mean_mm"] = 3 * float(row["tibia_medial_thickness_mean_mm"])
    rows.append({"id": "knee_bad", "status": "failed", "error_category": "unreadable_dicom",
                 "error_message": "Series has no pixel data."})
    cols = list(rows[0])
    path = tmp_path / "cohort_results.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    html_path = build_cohort_report(path, tmp_path / "cohort")
    text = html_path.read_text()
    for ref in _referenced(text):
        assert _read_png(html_path.parent / ref).std() > PIXEL_STD_FLOOR
    assert {"cohort_thickness.png", "cohort_bscore.png"} <= set(_referenced(text))
    summary = json.loads((html_path.parent / "cohort_report.json").read_text())
    assert summary["failed"] == 1 and summary["failed_knees"][0]["error_category"] == "unreadable_dicom"
    assert "Series has no pixel data." in text and "knee_bad" in text
    flagged = {(o["id"], o["column"]) for o in summary["outliers"]}
    assert ("knee03", "tibia_medial_thickness_mean_mm") in flagged
    assert all(i != "knee_bad" for i, _ in flagged)


def test_cohort_command_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,status,error_category,error_message,femur_trochlea_thickness_mean_mm\n"
                    "a,complete,,,2.1\nb,complete,,,2.3\nc,failed,timeout,took too long,\n")
    proc = subprocess.run([sys.executable, "-m", "KneePipelineLib", "--quiet-progress", "report", "--cohort", str(path),
                           "--out", str(tmp_path / "o")], cwd=str(ROOT), env=_env_headless(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "o" / "cohort_report.html").read_text()
    assert "took too long" in text
    bad = subprocess.run([sys.executable, "-m", "KneePipelineLib", "--quiet-progress", "report", str(tmp_path)],
                         cwd=str(ROOT), env=_env_headless(), capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not a run folder" in bad.stderr


# -- analytic: orientation comes from the direction matrix, not the array axes -------------------
def _phantom(direction, spacing):
    """A label volume holding a marker (9) near anterior-superior and a long bone (7) along S-I, built in
    physical space for any direction matrix."""
    from KneePipelineLib.io.volume import Volume

    shape_ijk = (60, 60, 40)
    d = np.asarray(direction, float)
    sp = np.asarray(spacing, float)
    centre_ijk = (np.array(shape_ijk) - 1) / 2
    origin = -d @ (sp * centre_ijk)
    vol = Volume(np.zeros(shape_ijk[::-1], np.uint8), sp, origin, d)
    k, j, i = np.indices(vol.array.shape)
    lps = vol.ijk_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(vol.array.shape + (3,))
    x, y, z = lps[..., 0], lps[..., 1], lps[..., 2]
    vol.array[(np.abs(x) < 6) & (np.abs(y) < 4) & (np.abs(z) < 18)] = 7
    vol.array[(np.abs(x) < 6) & (np.abs(y + 12) < 3) & (np.abs(z - 10) < 3)] = 9   # anterior (-y), superior (+z)
    return vol


@pytest.mark.parametrize("direction,spacing", [
    (np.eye(3), (1.0, 1.0, 1.0)),
    # sample-like sagittal acquisition: i ~ P, j ~ -S, k ~ -x, 5 degrees oblique, anisotropic voxels
    ([[-0.0871557, 0, -0.9961947], [0.9961947, 0, -0.0871557], [0, -1, 0]], (0.9, 0.8, 1.2)),
])
def test_sagittal_plane_shows_anterior_left_superior_up(direction, spacing):
    from KneePipelineLib.report.slices import make_plane, sample

    vol = _phantom(direction, spacing)
    plane = make_plane("sagittal", 0.0, np.array([-20, -20, -20.0]), np.array([20, 20, 20.0]), "t", margin_mm=0,
                       max_px=80)
    lab = sample(vol, plane.lps_points(), order=0)
    rows, cols = np.nonzero(lab == 9)
    assert rows.size > 5
    # screen: h = y increasing to the right (anterior left), v = z increasing upward (row index up)
    h = plane.h[cols].mean()
    v = plane.v[rows].mean()
    assert h == pytest.approx(-12, abs=1.5) and v == pytest.approx(10, abs=1.5)
    # the marker sits in the left half and the upper half of the displayed (origin='lower') image
    assert cols.mean() < lab.shape[1] / 2 and rows.mean() > lab.shape[0] / 2
    # pixels are square in mm
    assert np.diff(plane.h)[0] == pytest.approx(np.diff(plane.v)[0])


def test_medial_lateral_views_follow_laterality():
    from KneePipelineLib.report.render3d import view_vectors

    assert view_vectors("lateral", "right")[0][0] == -1.0      # right knee: lateral is the patient's right (-x)
    assert view_vectors("lateral", "left")[0][0] == 1.0
    assert view_vectors("medial", "left")[0][0] == -1.0
    assert view_vectors("anterior", "right")[0][1] == -1.0     # anterior is -y in LPS
