"""DICOM terminology entries for the knee's segments, as Slicer stores them in a segment's
``TerminologyEntry`` tag (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``:
context~category~type~type modifier~anatomic context~anatomic region~region modifier, each code as
scheme^value^meaning).

Codes are the ones in Slicer's own terminology files (Modules/Loadable/Terminologies/Resources, identical in
5.8.0 and 5.12.3): femur, patella and fibula are Anatomical Structures of
``SegmentationCategoryTypeModifier-DICOM-Master.json`` (with Right / Left modifiers); cartilage and meniscus are
Tissues of ``SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json``, placed by an anatomic region of
``AnatomicRegionAndModifier-DICOM-Master.json`` (Femur, Knee). The tibia is in neither list: its entry uses the
DICOM master context with SNOMED CT 12611008 (Tibia), which Slicer shows as a custom type.
"""
from typing import Dict, Optional, Tuple

DICOM_MASTER = "Segmentation category and type - DICOM master list"
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
TISSUE = ("SCT", "85756007", "Tissue")
CARTILAGE = ("SCT", "309312004", "Cartilage")
MENISCUS = ("SCT", "74135004", "Meniscus")
REGION_FEMUR = ("SCT", "71341001", "Femur")
REGION_KNEE = ("SCT", "72696002", "Knee")
LATERALITY = {"right": ("SCT", "24028007", "Right"), "left": ("SCT", "7771000", "Left")}

Code = Tuple[str, str, str]
# structure -> (context, category, type, anatomic region or None)
ENTRIES: Dict[str, Tuple[str, Code, Code, Optional[Code]]] = {
    "femur": (DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "71341001", "Femur"), None),
    "patella": (DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "64234005", "Patella"), None),
    "fibula": (DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "87342007", "Fibula"), None),
    "tibia": (DICOM_MASTER, ANATOMICAL_STRUCTURE, ("SCT", "12611008", "Tibia"), None),
    "femoral_cartilage": (GENERAL_ANATOMY, TISSUE, CARTILAGE, REGION_FEMUR),
    "medial_tibial_cartilage": (GENERAL_ANATOMY, TISSUE, CARTILAGE, REGION_KNEE),
    "lateral_tibial_cartilage": (GENERAL_ANATOMY, TISSUE, CARTILAGE, REGION_KNEE),
    "patellar_cartilage": (GENERAL_ANATOMY, TISSUE, CARTILAGE, REGION_KNEE),
    "medial_meniscus": (GENERAL_ANATOMY, TISSUE, MENISCUS, REGION_KNEE),
    "lateral_meniscus": (GENERAL_ANATOMY, TISSUE, MENISCUS, REGION_KNEE),
}
_EMPTY: Code = ("", "", "")


def _code(c: Optional[Code]) -> str:
    return "^".join(c or _EMPTY)


def terminology_entry(structure: str, laterality: Optional[str] = None) -> Optional[str]:
    """The serialized entry for a tissue name (None for names without one). ``laterality`` ("right" /
    "left") becomes the type modifier of bones and the region modifier of cartilage and menisci."""
    entry = ENTRIES.get(structure)
    if entry is None:
        return None
    context, category, type_, region = entry
    side = LATERALITY.get((laterality or "").lower())
    type_modifier = side if region is None else None
    region_modifier = side if region is not None else None
    return "~".join([context, _code(category), _code(type_), _code(type_modifier), ANATOMIC_CONTEXT,
                     _code(region), _code(region_modifier)])
