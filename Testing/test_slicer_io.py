"""slicer_io against slicer-core's real vtkMRMLScene: a real pipeline run on the sample label map, loaded.

The run folder comes from the real `analyze` command; if it fails, the tests fail (no stand-in folder).
A contract folder written here (oblique geometry) and the module's offline sample run are tested on their own.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
sitk = pytest.importorskip("SimpleITK")

from KneePipelineLib import labels as L  # noqa: E402
from KneePipelineLib.manifest import Manifest, OutputEntry  # noqa: E402
from KneePipelineLib.slicer_io import LoadError, existing_runs, load_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- fixtures ---------------------------------------------------------------------------------------
def _write_contract_run(out: Path, labels_path: Path) -> Path:
    """A run folder in the manifest contract, from the real sample label map (cropped, oblique geometry)."""
    from vtk.util import numpy_support as ns

    img = sitk.ReadImage(str(labels_path))
    arr = sitk.GetArrayFromImage(img)
    table = L.CONVENTIONS["pymskt"]
    lut = np.zeros(256, np.uint8)
    for k, v in table.items():
        lut[k] = v
    arr = lut[arr][::2, ::4, ::4]   # keep it small
    out.mkdir(parents=True)
    (out / "meshes").mkdir()
    th = math.radians(20)
    direction = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
    lab = sitk.GetImageFromArray(arr)
    lab.SetSpacing((1.46, 1.46, 1.4))
    lab.SetOrigin((12.0, -30.0, 5.0))
    lab.SetDirection(direction.flatten().tolist())
    sitk.WriteImage(lab, str(out / "labels.nii.gz"))
    reg = arr.copy()
    reg[arr == L.FEMORAL_CARTILAGE] = 12
    sitk.WriteImage(_with_geometry(sitk.GetImageFromArray(reg), lab), str(out / "regions.nii.gz"))
    # femur surface in LPS from the label map, with a thickness array
    vimg = vtk.vtkImageData()
    vimg.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    vimg.GetPointData().SetScalars(ns.numpy_to_vtk(arr.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    fe = vtk.vtkDiscreteFlyingEdges3D()
    fe.SetInputData(vimg)
    fe.SetValue(0, L.FEMUR)
    fe.Update()
    poly = fe.GetOutput()
    ijk = ns.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    lps = ijk * np.array(lab.GetSpacing()) @ direction.T + np.array(lab.GetOrigin())
    poly.GetPoints().SetData(ns.numpy_to_vtk(lps, deep=True))
    th_arr = ns.numpy_to_vtk(np.linspace(0, 6, len(lps)), deep=True)
    th_arr.SetName("thickness_mm")
    poly.GetPointData().AddArray(th_arr)
    w = vtk.vtkXMLPolyDataWriter()
    w.SetFileName(str(out / "meshes" / "femur.vtp"))
    w.SetInputData(poly)
    w.Write()
    results = {"schema": "kneepipeline-results/1",
               "laterality": {"side": "right", "evidence": "test", "confidence": 0.9},
               "regions": [{"name": r.name, "code": r.code, "display": r.display, "chondrometrics": r.chondrometrics,
                            "thickness_mean_mm": 1.0 + 0.1 * i, "thickness_std_mm": 0.2, "area_mm2": 100.0 + i}
                           for i, r in enumerate(L.REGIONS)],
               "nsm": {"nsm_bone_cartilage": {"bscore": 1.25, "assd_bone_mm": 0.4}}}
    (out / "results.json").write_text(json.dumps(results))
    (out / "results.csv").write_text("laterality,femur_trochlea_thickness_mean_mm\nright,1.0\n")
    m = Manifest(status="complete", command="contract")
    m.add(OutputEntry("labels.nii.gz", "labelmap", coordinate_system="LPS", labels={str(k): v for k, v in L.TISSUES.items()}))
    m.add(OutputEntry("regions.nii.gz", "labelmap", coordinate_system="LPS",
                      labels={str(k): v for k, v in L.region_label_names().items()}))
    m.add(OutputEntry("meshes/femur.vtp", "mesh", structure="femur", coordinate_system="LPS", scalars=["thickness_mm"]))
    m.add(OutputEntry("results.json", "json"))
    m.add(OutputEntry("results.csv", "table"))
    m.write(str(out))
    return out


def _with_geometry(img, ref):
    img.CopyInformation(ref)
    return img


@pytest.fixture(scope="session")
def pipeline_run(sample_analyze_run):
    """One real `analyze` run on the sample label map per session (conftest: shared with test_pipeline)."""
    return {"dir": sample_analyze_run["dir"], "real": True}


def _new_scene():
    s = slicer.vtkMRMLScene()
    # what the application has in every scene: the default colour tables
    logic = slicer.vtkMRMLColorLogic()
    logic.SetMRMLScene(s)
    logic.AddDefaultColorNodes()
    logic.SetMRMLScene(None)
    return s


@pytest.fixture()
def scene():
    return _new_scene()


@pytest.fixture(scope="module")
def shared_scene():
    return _new_scene()


@pytest.fixture(scope="module")
def loaded(shared_scene, pipeline_run):
    """Loaded once; the tests using it only read the scene."""
    return load_run(shared_scene, str(pipeline_run["dir"]), name="knee")


def _ras_of_voxel(node, ijk):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array(m.MultiplyPoint(list(ijk) + [1.0])[:3])


pytestmark = pytest.mark.slow   # one real pipeline run (~50 s on 2 shared cores) per session

# -- tests ------------------------------------------------------------------------------------------
def test_segments_are_named_coloured_and_keep_label_values(loaded):
    seg = loaded.segmentation
    assert seg is not None and seg.IsA("vtkMRMLSegmentationNode")
    s = seg.GetSegmentation()
    by_name = {s.GetNthSegment(i).GetName(): s.GetNthSegment(i) for i in range(s.GetNumberOfSegments())}
    for name in ("femur", "tibia", "patella", "femoral_cartilage", "medial_tibial_cartilage", "patellar_cartilage"):
        assert name in by_name, sorted(by_name)
        segment = by_name[name]
        assert segment.GetLabelValue() == L.TISSUE_CODES[name]
        assert np.allclose(segment.GetColor(), np.array(L.COLORS[name]) / 255.0, atol=1e-3)
    tag = vtk.mutable("")
    assert by_name["femur"].GetTag("TerminologyEntry", tag) and "71341001" in str(tag)
    # closed surfaces exist (the segmentations logic was on the scene before the node)
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    femur_poly = vtk.vtkPolyData()
    seg.GetClosedSurfaceRepresentation(by_name["femur"].GetName() and s.GetSegmentIdBySegment(by_name["femur"]), femur_poly)
    assert femur_poly.GetNumberOfPoints() > 100


def test_segmentation_voxels_match_the_label_map(loaded, pipeline_run):
    """Every femur voxel of the file is a femur voxel of the segment, at the same RAS place."""
    entry = next(e for e in loaded.manifest.find(kind="labelmap") if "region" not in e.path)
    img = sitk.ReadImage(str(pipeline_run["dir"] / entry.path))
    arr = sitk.GetArrayFromImage(img)
    s = loaded.segmentation.GetSegmentation()
    seg_id = s.GetSegmentIdBySegmentName("femur")
    from vtk.util import numpy_support as ns

    segment = s.GetSegment(seg_id)
    image = segment.GetRepresentation("Binary labelmap")     # the shared layer, with label values
    values = ns.vtk_to_numpy(image.GetPointData().GetScalars())
    assert int((values == segment.GetLabelValue()).sum()) == int((arr == L.FEMUR).sum())
    # and the layer sits on the file's grid: its image-to-world matrix is the volume's IJK-to-RAS
    m_seg, m_vol = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m_seg)
    loaded.regions.GetIJKToRASMatrix(m_vol)
    assert np.allclose(slicer.util.arrayFromVTKMatrix(m_seg), slicer.util.arrayFromVTKMatrix(m_vol), atol=1e-4)


def test_region_labelmap_and_lps_to_ras_geometry(loaded, pipeline_run):
    reg = loaded.regions
    assert reg is not None and reg.IsA("vtkMRMLLabelMapVolumeNode")
    entry = next(e for e in loaded.manifest.find(kind="labelmap") if "region" in e.path)
    img = sitk.ReadImage(str(pipeline_run["dir"] / entry.path))
    ijk = (3, 5, 7)
    lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
    assert np.allclose(_ras_of_voxel(reg, ijk), lps * [-1, -1, 1], atol=1e-3)
    colors = reg.GetDisplayNode().GetColorNode()
    assert colors.GetColorName(12) == "femur_medial_weightbearing"
    assert np.array_equal(slicer.util.arrayFromVolume(reg), sitk.GetArrayFromImage(img))


def test_models_are_in_ras_with_thickness_shown_in_a_fixed_range(loaded, pipeline_run):
    femur = loaded.models["femur"]
    entry = loaded.manifest.find(kind="mesh", structure="femur")[0]
    r = vtk.vtkXMLPolyDataReader() if entry.path.endswith(".vtp") else vtk.vtkPolyDataReader()
    r.SetFileName(str(pipeline_run["dir"] / entry.path))
    r.Update()
    lps = np.array(r.GetOutput().GetPoint(0))
    ras = np.array(femur.GetPolyData().GetPoint(0))
    assert np.allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    d = femur.GetDisplayNode()
    assert d.GetActiveScalarName() == "thickness_mm" and d.GetScalarVisibility()
    assert d.GetScalarRangeFlag() == slicer.vtkMRMLDisplayNode.UseManualScalarRange
    assert tuple(d.GetScalarRange()) == (0.0, 4.0)
    assert d.GetColorNodeID() == "vtkMRMLColorTableNodeRainbow"
    assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(femur) is not None


def test_segmentation_and_models_overlap_in_ras(loaded):
    """A flip applied twice (or never) to meshes would put the femur model ~100 mm away from the femur segment."""
    s = loaded.segmentation.GetSegmentation()
    poly = vtk.vtkPolyData()
    loaded.segmentation.GetClosedSurfaceRepresentation(s.GetSegmentIdBySegmentName("femur"), poly)
    distance = vtk.vtkImplicitPolyDataDistance()
    distance.SetInput(poly)
    model = loaded.models["femur"].GetPolyData()
    step = max(1, model.GetNumberOfPoints() // 400)
    d = np.array([abs(distance.EvaluateFunction(model.GetPoint(i))) for i in range(0, model.GetNumberOfPoints(), step)])
    # the femur model is cropped along the shaft, so its flat cut face lies inside the (uncropped) segment:
    # most points sit on the surface, the cut face's points do not
    assert np.median(d) < 1.0 and np.percentile(d, 80) < 1.5, (np.median(d), np.percentile(d, 80))


def test_tables_are_typed_and_chart_plots_regional_thickness(loaded):
    regions = loaded.tables["regions"]
    t = regions.GetTable()
    assert t.GetNumberOfRows() == len(loaded.results["regions"])
    numeric = [t.GetColumn(i).GetName() for i in range(t.GetNumberOfColumns()) if t.GetColumn(i).IsA("vtkDataArray")]
    assert "code" in numeric and any("thickness" in c and "mean" in c for c in numeric)
    assert t.GetColumnByName("name").IsA("vtkStringArray")
    results = loaded.tables["results"].GetTable()
    assert results.GetNumberOfRows() == 1
    assert any(results.GetColumn(i).IsA("vtkDoubleArray") for i in range(results.GetNumberOfColumns()))
    assert loaded.chart is not None and loaded.chart.GetNumberOfPlotSeriesNodes() == 1
    series = loaded.series[0]
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert series.GetTableNode() is regions
    col = series.GetYColumnName()
    values = slicer.util.arrayFromTableColumn(regions, col)
    assert np.all(np.isfinite(values[~np.isnan(values)])) and np.nanmax(values) > 0


def test_everything_sits_in_one_subject_hierarchy_folder(shared_scene, loaded, pipeline_run):
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(shared_scene)
    assert sh.GetItemName(loaded.folder_item) == "knee (run 1)"
    for node in loaded.all_nodes():
        item = sh.GetItemByDataNode(node)
        assert item, node.GetName()
        parent = sh.GetItemParent(item)
        assert parent == loaded.folder_item or sh.GetItemParent(parent) == loaded.folder_item, node.GetName()
    assert loaded.laterality == "right"
    assert any(line.startswith("Laterality: right") for line in loaded.summary_lines())
    if pipeline_run["real"]:
        assert loaded.report_path and loaded.report_path.endswith("report.html")
        assert {"femur", "tibia", "patella", "femoral_cartilage"} <= set(loaded.models)
        for bone in ("tibia", "patella"):
            assert loaded.models[bone].GetDisplayNode().GetActiveScalarName() == "thickness_mm"


def test_reloading_versions_or_replaces(scene, pipeline_run):
    loaded = load_run(scene, str(pipeline_run["dir"]), name="knee", create_surfaces=False)
    second = load_run(scene, str(pipeline_run["dir"]), name="knee", create_surfaces=False)
    assert second.index == 2
    assert len(existing_runs(scene, str(pipeline_run["dir"]))) == 2
    n_models = scene.GetNumberOfNodesByClass("vtkMRMLModelNode")
    third = load_run(scene, str(pipeline_run["dir"]), name="knee", replace=True, create_surfaces=False)
    assert len(existing_runs(scene)) == 1 and third.index == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == n_models // 2
    assert scene.GetNodeByID(loaded.segmentation.GetID()) is None   # replaced, not left behind


def test_unfinished_run_is_refused(tmp_path, scene):
    Manifest(status="running").write(str(tmp_path))
    with pytest.raises(LoadError, match="running"):
        load_run(scene, str(tmp_path))
    with pytest.raises(LoadError, match="manifest"):
        load_run(scene, str(tmp_path / "nope"))


def test_mrb_round_trip(tmp_path, scene, pipeline_run):
    loaded = load_run(scene, str(pipeline_run["dir"]), name="knee", create_surfaces=False)
    mrb = str(tmp_path / "knee.mrb")
    assert scene.WriteToMRB(mrb)
    s2 = slicer.vtkMRMLScene()
    from KneePipelineLib.slicer_io import ensure_logics

    ensure_logics(s2)
    cache = slicer.vtkCacheManager()          # the application gives every scene one
    cache.SetRemoteCacheDirectory(str(tmp_path / "cache"))
    dio = slicer.vtkDataIOManager()
    dio.SetCacheManager(cache)
    s2.SetCacheManager(cache)
    s2.SetDataIOManager(dio)
    assert s2.ReadFromMRB(mrb)
    seg = s2.GetFirstNodeByName(loaded.segmentation.GetName())
    assert seg is not None and seg.GetSegmentation().GetSegmentIdBySegmentName("femur")
    femur = s2.GetFirstNodeByName(loaded.models["femur"].GetName())
    assert np.allclose(femur.GetPolyData().GetPoint(0), loaded.models["femur"].GetPolyData().GetPoint(0), atol=1e-3)
    assert femur.GetDisplayNode().GetActiveScalarName() == "thickness_mm"
    assert tuple(femur.GetDisplayNode().GetScalarRange()) == (0.0, 4.0)
    reg = s2.GetFirstNodeByName(loaded.regions.GetName())
    assert np.allclose(_ras_of_voxel(reg, (3, 5, 7)), _ras_of_voxel(loaded.regions, (3, 5, 7)), atol=1e-3)
    table = s2.GetFirstNodeByName(loaded.tables["regions"].GetName())
    assert table.GetTable().GetColumnByName("code").IsA("vtkDataArray")
    sh2 = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(s2)
    item = sh2.GetItemByDataNode(femur)
    assert sh2.GetItemName(sh2.GetItemParent(item)) == "knee (run 1)"


def test_oblique_contract_folder_geometry(tmp_path, sample_labels_path, scene):
    """Oblique (20 degree) geometry: a known voxel and a mesh point land at the RAS place of their LPS."""
    run = _write_contract_run(tmp_path / "oblique", sample_labels_path)
    lr = load_run(scene, str(run), create_surfaces=False)
    img = sitk.ReadImage(str(run / "regions.nii.gz"))
    for ijk in [(0, 0, 0), (10, 20, 30), (95, 95, 79)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        assert np.allclose(_ras_of_voxel(lr.regions, ijk), lps * [-1, -1, 1], atol=1e-3)
    r = vtk.vtkXMLPolyDataReader()
    r.SetFileName(str(run / "meshes" / "femur.vtp"))
    r.Update()
    for i in (0, 100, r.GetOutput().GetNumberOfPoints() - 1):
        assert np.allclose(lr.models["femur"].GetPolyData().GetPoint(i), np.array(r.GetOutput().GetPoint(i)) * [-1, -1, 1])
    assert lr.bscores == {"nsm_bone_cartilage": 1.25}


def test_terminology_entries_use_slicers_codes_and_laterality(loaded):
    """Bones: DICOM master list Anatomical Structure + Right/Left; cartilage / menisci: General Anatomy Tissue
    with an anatomic region (codes as in Slicer's Modules/Loadable/Terminologies/Resources, 5.8.0 and 5.12.3)."""
    from KneePipelineLib.slicer_io.terminology import terminology_entry

    s = loaded.segmentation.GetSegmentation()

    def entry(name):
        tag = vtk.mutable("")
        assert s.GetSegment(s.GetSegmentIdBySegmentName(name)).GetTag("TerminologyEntry", tag), name
        return str(tag).split("~")

    femur = entry("femur")
    assert femur[0] == "Segmentation category and type - DICOM master list"
    assert femur[1:4] == ["SCT^123037004^Anatomical Structure", "SCT^71341001^Femur", "SCT^24028007^Right"]
    assert entry("patella")[2] == "SCT^64234005^Patella" and entry("tibia")[2] == "SCT^12611008^Tibia"
    cart = entry("femoral_cartilage")
    assert cart[0] == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert cart[1:3] == ["SCT^85756007^Tissue", "SCT^309312004^Cartilage"]
    assert cart[4:] == ["Anatomic codes - DICOM master list", "SCT^71341001^Femur", "SCT^24028007^Right"]
    assert entry("medial_meniscus")[2] == "SCT^74135004^Meniscus"
    assert len(femur) == 7 and all(len(x.split("^")) == 3 for x in femur[1:4] + femur[5:])
    assert terminology_entry("femur", "left").split("~")[3] == "SCT^7771000^Left"
    assert terminology_entry("femur").split("~")[3] == "^^" and terminology_entry("nonsense") is None


def test_module_offline_sample_run_loads(tmp_path, scene):
    """The run folder the module's offline self-test writes (standard library only) loads completely, in RAS."""
    from KneePipelineLib.slicer_io.sample_run import voxel_to_lps, write_sample_run

    run = write_sample_run(str(tmp_path / "sample"), side="left")
    lr = load_run(scene, run)
    s = lr.segmentation.GetSegmentation()
    assert sorted(s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())) == \
        ["femoral_cartilage", "femur", "tibia"]
    assert lr.laterality == "left" and lr.chart is not None and lr.regions is not None
    assert np.allclose(_ras_of_voxel(lr.regions, (5, 6, 7)), np.array(voxel_to_lps(5, 6, 7)) * [-1, -1, 1], atol=1e-4)
    femur = lr.models["femur"]
    assert np.allclose(femur.GetPolyData().GetPoint(0), np.array(voxel_to_lps(3, 9, 2)) * [-1, -1, 1], atol=1e-4)
    assert femur.GetDisplayNode().GetActiveScalarName() == "thickness_mm"
    assert lr.tables["regions"].GetTable().GetNumberOfRows() == len(L.REGIONS)
