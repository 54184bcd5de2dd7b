"""A segmentation node -> a label map node with the canonical (DOSMA) tissue values, for the pipeline's input."""
import slicer
import vtk


def segmentation_to_canonical_labelmap(segNode, referenceVolume=None):
    """Segments named like the canonical tissues (femur, femoral_cartilage, ...) -> a new label map node in
    the segmentation's scene with the canonical label values (segment names looked up in a colour table).
    Other segments are left out. The caller removes the returned node when done with it."""
    from KneePipelineLib import labels as L
    from KneePipelineLib.errors import LabelConventionError

    scene = segNode.GetScene()
    seg = segNode.GetSegmentation()
    names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    known = [n for n in names if n in L.TISSUE_CODES]
    if not known:
        raise LabelConventionError("None of the segments (%s) is named like a knee tissue." % ", ".join(names),
                                   hint="Name segments femur, tibia, patella, femoral_cartilage, ... or export "
                                        "the segmentation to a label map and choose its convention.")
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "KneePipeline export colors")
    labelmap = None
    try:
        colors.SetTypeToUser()
        colors.SetNumberOfColors(max(L.TISSUES) + 1)
        colors.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for value, name in L.TISSUES.items():
            colors.SetColor(value, name, 1.0, 1.0, 1.0, 1.0)
        ids = vtk.vtkStringArray()
        for name in known:
            ids.InsertNextValue(seg.GetSegmentIdBySegmentName(name))
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "KneePipeline export")
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segNode, ids, labelmap, referenceVolume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colors)
        if not ok:
            raise RuntimeError("Could not export the segmentation %s to a label map." % segNode.GetName())
    except BaseException:
        if labelmap is not None:
            scene.RemoveNode(labelmap)
        raise
    finally:
        scene.RemoveNode(colors)
    return labelmap
