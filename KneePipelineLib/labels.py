"""One canonical label scheme, remaps from the published conventions, sub-region codes, laterality.

Canonical tissue labels are the DOSMA / nnU-Net knee numbering (what every segmentation model emits)
plus fibula = 10, so model outputs need no remap. Sub-region codes (the ``regions`` label map):
femoral cartilage 11-15 (as in the reference), tibial and patellar cartilage keep their tissue codes;
deep / superficial layers add 100 / 200.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np

from .errors import LabelConventionError, MissingStructuresError

# -- canonical tissues --------------------------------------------------------------------------
BACKGROUND = 0
PATELLAR_CARTILAGE = 1
FEMORAL_CARTILAGE = 2
MEDIAL_TIBIAL_CARTILAGE = 3
LATERAL_TIBIAL_CARTILAGE = 4
MEDIAL_MENISCUS = 5
LATERAL_MENISCUS = 6
FEMUR = 7
TIBIA = 8
PATELLA = 9
FIBULA = 10

TISSUES: Dict[int, str] = {
    PATELLAR_CARTILAGE: "patellar_cartilage",
    FEMORAL_CARTILAGE: "femoral_cartilage",
    MEDIAL_TIBIAL_CARTILAGE: "medial_tibial_cartilage",
    LATERAL_TIBIAL_CARTILAGE: "lateral_tibial_cartilage",
    MEDIAL_MENISCUS: "medial_meniscus",
    LATERAL_MENISCUS: "lateral_meniscus",
    FEMUR: "femur",
    TIBIA: "tibia",
    PATELLA: "patella",
    FIBULA: "fibula",
}
TISSUE_CODES: Dict[str, int] = {v: k for k, v in TISSUES.items()}
BONES = (FEMUR, TIBIA, PATELLA)
CARTILAGES = (PATELLAR_CARTILAGE, FEMORAL_CARTILAGE, MEDIAL_TIBIAL_CARTILAGE, LATERAL_TIBIAL_CARTILAGE)

# Display colours (RGB 0-255), close to Slicer's generic anatomy colours.
COLORS: Dict[str, tuple] = {
    "patellar_cartilage": (111, 184, 210), "femoral_cartilage": (230, 220, 70),
    "medial_tibial_cartilage": (216, 101, 79), "lateral_tibial_cartilage": (241, 214, 145),
    "medial_meniscus": (183, 156, 220), "lateral_meniscus": (128, 174, 128),
    "femur": (241, 214, 170), "tibia": (250, 230, 190), "patella": (221, 186, 150), "fibula": (200, 160, 120),
}

# -- published conventions: source value -> canonical -------------------------------------------
CONVENTIONS: Dict[str, Dict[int, int]] = {
    "dosma": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9},
    "pymskt": {0: 0, 1: FEMORAL_CARTILAGE, 2: MEDIAL_TIBIAL_CARTILAGE, 3: LATERAL_TIBIAL_CARTILAGE,
               4: PATELLAR_CARTILAGE, 5: FEMUR, 6: TIBIA, 7: PATELLA, 8: FIBULA,
               9: LATERAL_MENISCUS, 10: MEDIAL_MENISCUS},
}
CONVENTIONS["nnunet"] = CONVENTIONS["dosma"]
# Our own outputs (labels.nii.gz / segmentation.nii.gz): the DOSMA numbering plus fibula = 10.
CONVENTIONS["canonical"] = {v: v for v in range(0, 11)}

# -- sub-regions --------------------------------------------------------------------------------
DEEP_OFFSET = 100
SUPERFICIAL_OFFSET = 200


@dataclass(frozen=True)
class Region:
    code: int
    name: str            # our key, used in results column names
    display: str
    chondrometrics: str  # the field's standard abbreviation
    tissue: int          # canonical tissue label
    bone: int            # bone whose surface carries the thickness


REGIONS: List[Region] = [
    Region(11, "femur_trochlea", "Femur anterior (trochlea)", "TrF", FEMORAL_CARTILAGE, FEMUR),
    Region(12, "femur_medial_weightbearing", "Femur medial weight-bearing", "cMF", FEMORAL_CARTILAGE, FEMUR),
    Region(13, "femur_lateral_weightbearing", "Femur lateral weight-bearing", "cLF", FEMORAL_CARTILAGE, FEMUR),
    Region(14, "femur_medial_posterior", "Femur medial posterior", "pMF", FEMORAL_CARTILAGE, FEMUR),
    Region(15, "femur_lateral_posterior", "Femur lateral posterior", "pLF", FEMORAL_CARTILAGE, FEMUR),
    Region(MEDIAL_TIBIAL_CARTILAGE, "tibia_medial", "Tibia medial", "MT", MEDIAL_TIBIAL_CARTILAGE, TIBIA),
    Region(LATERAL_TIBIAL_CARTILAGE, "tibia_lateral", "Tibia lateral", "LT", LATERAL_TIBIAL_CARTILAGE, TIBIA),
    Region(PATELLAR_CARTILAGE, "patella", "Patella", "P", PATELLAR_CARTILAGE, PATELLA),
]
REGION_BY_CODE: Dict[int, Region] = {r.code: r for r in REGIONS}
REGION_BY_NAME: Dict[str, Region] = {r.name: r for r in REGIONS}
# Whole plates, summarised in addition to sub-regions.
PLATES: Dict[str, List[int]] = {
    "femur": [11, 12, 13, 14, 15],
    "tibia_medial": [MEDIAL_TIBIAL_CARTILAGE],
    "tibia_lateral": [LATERAL_TIBIAL_CARTILAGE],
    "patella": [PATELLAR_CARTILAGE],
}


def region_label_names() -> Dict[int, str]:
    """Names of every value that can occur in a ``regions`` label map."""
    names = {k: v for k, v in TISSUES.items()}
    for r in REGIONS:
        names[r.code] = r.name
        names[r.code + DEEP_OFFSET] = r.name + "_deep"
        names[r.code + SUPERFICIAL_OFFSET] = r.name + "_superficial"
    return names


# -- remapping ----------------------------------------------------------------------------------
MAX_LABEL_VALUE = 65535   # label maps are read as 8- or 16-bit unsigned integers


def _reject_duplicates(pairs):
    seen = {}
    for key, val in pairs:
        if key in seen:
            raise LabelConventionError("The label value %r appears twice in the JSON label map." % key,
                                       hint="Give each label value once.")
        seen[key] = val
    return seen


def _looks_like_path(spec: str) -> bool:
    return spec.lower().endswith(".json") or os.sep in spec or "/" in spec


def load_convention(spec: str) -> Dict[int, int]:
    """A convention name (dosma, nnunet, pymskt) or a JSON file.

    The JSON file maps source values to canonical tissue names or codes, e.g.
    ``{"1": "femoral_cartilage", "5": "femur", "0": "background"}``. Keys are integers 0..65535 given once;
    values are tissue names, ``"background"``/``null``, or canonical codes 0..10 (not ``true``/``false``).
    """
    if spec in CONVENTIONS:
        return dict(CONVENTIONS[spec])
    path = Path(spec)
    if not path.is_file():
        if _looks_like_path(spec):
            raise LabelConventionError("The JSON label map file %s does not exist." % spec,
                                       hint="Check the path given to --label-convention.")
        raise LabelConventionError("Unknown label convention %r." % spec,
                                   hint="Use dosma, pymskt, or a JSON file mapping label values to tissue names.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_reject_duplicates,
                         parse_constant=lambda c: c)
    except LabelConventionError as exc:
        raise LabelConventionError("%s: %s" % (path.name, exc.message), hint=exc.hint) from None
    except (OSError, ValueError) as exc:
        raise LabelConventionError("The label map file %s is not valid JSON: %s." % (path.name, exc),
                                   hint="Write it as {\"value\": \"tissue\", ...}.") from exc
    if isinstance(raw, dict) and "labels" in raw and isinstance(raw["labels"], dict):
        raw = raw["labels"]
    if not isinstance(raw, dict) or not raw:
        raise LabelConventionError("The label map file %s must hold a non-empty JSON object {value: tissue}." % path.name)
    names = "background, " + ", ".join(TISSUE_CODES)
    table: Dict[int, int] = {0: 0}
    for key, val in raw.items():
        text = str(key).strip()
        if not text.lstrip("+-").isdigit():
            raise LabelConventionError("Label value %r in %s is not an integer." % (key, path.name),
                                       hint="Keys are the label map's integer values 0..%d." % MAX_LABEL_VALUE)
        src = int(text)
        if not 0 <= src <= MAX_LABEL_VALUE:
            raise LabelConventionError("Label value %s in %s is outside 0..%d." % (text[:20], path.name, MAX_LABEL_VALUE),
                                       hint="Label maps hold non-negative integers of at most 16 bits.")
        if isinstance(val, bool) or (val is not None and not isinstance(val, (int, str))):
            raise LabelConventionError("The tissue of label %d in %s is %s, neither a tissue name nor a code."
                                       % (src, path.name, json.dumps(val)[:40]), hint="Tissue names: " + names + ".")
        if isinstance(val, int):
            dst = val
        elif val in ("background", None):
            dst = 0
        elif val in TISSUE_CODES:
            dst = TISSUE_CODES[val]
        else:
            raise LabelConventionError("Unknown tissue %r in %s." % (str(val)[:40], path.name),
                                       hint="Tissue names: " + names + ".")
        if dst != 0 and dst not in TISSUES:
            raise LabelConventionError("Canonical code %r in %s does not exist." % (dst, path.name),
                                       hint="Codes are 0..10 (%s), or use the names." % names)
        table[src] = dst
    return table


def remap(array: np.ndarray, table: Mapping[int, int], convention_name: str = "") -> np.ndarray:
    """Remap label values to canonical; values not in the convention are an error (never guessed)."""
    present = np.unique(array)
    if present.size and (int(present.min()) < 0 or int(present.max()) > MAX_LABEL_VALUE):
        raise LabelConventionError("The label map holds values outside 0..%d." % MAX_LABEL_VALUE,
                                   hint="A label map holds small non-negative integers.")
    unknown = [int(v) for v in present if int(v) not in table]
    if unknown:
        conv = convention_name or "chosen"
        if len(unknown) > 12:   # an MRI given as a label map: say so, without listing every grey value
            raise LabelConventionError(
                "The label map holds %d distinct values (%d of them, e.g. %s ... %d, not defined by the %s "
                "convention): this looks like an image, not a label map."
                % (len(present), len(unknown), ", ".join(map(str, unknown[:5])), unknown[-1], conv),
                hint="Pass the MRI with --image and its segmentation with --labels.")
        raise LabelConventionError(
            "The label map holds value(s) %s that the %s convention does not define." % (unknown, conv),
            hint="Check --label-convention (dosma: 0-9, pymskt: 0-10) or supply a JSON map.")
    lut = np.zeros(max(int(present.max()) if present.size else 0, max(table)) + 1, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    return lut[array]


def orphan_cartilage_warnings(array: np.ndarray) -> List[str]:
    """A cartilage whose bone is missing cannot be measured (thickness is cast from the bone surface):
    one warning per such cartilage, so its region never vanishes from the results silently."""
    present = set(int(v) for v in np.unique(array))
    out: List[str] = []
    for cart in CARTILAGES:
        bones = sorted({r.bone for r in REGIONS if r.tissue == cart})
        missing = [b for b in bones if b not in present]
        if cart in present and missing:
            regions = [r.name for r in REGIONS if r.tissue == cart]
            out.append("The label map has %s but no %s, so %s cannot be measured (no thickness, no row)."
                       % (TISSUES[cart], " or ".join(TISSUES[b] for b in missing), ", ".join(regions)))
    return out


def require(array: np.ndarray, needed: List[int], what: str = "the analysis") -> None:
    present = set(int(v) for v in np.unique(array))
    missing = [TISSUES[n] for n in needed if n not in present]
    if missing:
        raise MissingStructuresError("The label map has no %s, which %s needs." % (", ".join(missing), what))


# -- laterality ---------------------------------------------------------------------------------
@dataclass
class Laterality:
    side: str                  # "right" | "left"
    evidence: str              # which structures decided it
    confidence: float          # separation / medio-lateral width, 0..1


def detect_laterality(volume) -> Laterality:
    """Right or left knee from anatomy, in physical LPS space.

    LPS x grows toward the patient's left. In a right knee the lateral compartment (lateral tibial
    cartilage, lateral meniscus, fibula) lies at smaller x than the medial compartment.
    """
    arr = volume.array
    pairs = [((LATERAL_TIBIAL_CARTILAGE, LATERAL_MENISCUS, FIBULA), (MEDIAL_TIBIAL_CARTILAGE, MEDIAL_MENISCUS))]
    lat_idx = np.isin(arr, pairs[0][0])
    med_idx = np.isin(arr, pairs[0][1])
    if lat_idx.sum() == 0 or med_idx.sum() == 0:
        raise MissingStructuresError("Cannot tell left from right: the label map lacks medial or lateral "
                                     "tibial cartilage / menisci.")

    def centroid(mask):
        k, j, i = np.nonzero(mask)
        step = max(1, len(i) // 200000)
        ijk = np.stack([i[::step], j[::step], k[::step]], axis=1)
        return volume.ijk_to_lps(ijk).mean(axis=0)

    c_lat, c_med = centroid(lat_idx), centroid(med_idx)
    dx = float(c_med[0] - c_lat[0])
    ml = np.linalg.norm(c_med - c_lat)
    side = "right" if dx > 0 else "left"
    present = [TISSUES[t] for t in pairs[0][0] + pairs[0][1] if np.any(arr == t)]
    return Laterality(side, "lateral vs medial compartment x (LPS) from " + ", ".join(present),
                      float(min(1.0, abs(dx) / max(ml, 1e-6))))
