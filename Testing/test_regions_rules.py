"""Femoral sub-region rules with known answers: a synthetic pair of condyles where every rule of
:func:`femoral_subregions` decides a known set of voxels (trochlea at the notch edge, the 60 % weight-bearing
band, the 0.67/0.33 superior line, medial vs lateral for either knee), and the real knee's medial zones
on its medial side, right and mirrored left."""
import numpy as np
import pytest

from KneePipelineLib import labels as L
from KneePipelineLib.io import Volume
from KneePipelineLib.morphometry.regions import KneeFrame, femoral_region_of_points, femoral_subregions

H = 0.5                       # mm, isotropic voxels
C_AP, C_SI = 0.0, 22.0        # condyle circle centre in the AP-SI plane (mm)
R_IN, R_OUT = 20.0, 22.0      # condylar cartilage between these radii
CONDYLE_ML = (8.0, 25.0)      # |ml| range of each condyle
TROCHLEA_AP = (12.0, 14.0)    # a plate in front, over the whole width, up to SI 70
TROCHLEA_SI = (20.0, 70.0)


def _synthetic_femoral_cartilage():
    """Label map (identity direction: LPS x = ml toward medial of a right knee, -y = anterior, z = superior)
    and the (ml, ap, si, theta) of every voxel; theta = angle on the condyle circle from distal (0°)
    through posterior (90°) to the top (180°) and over it (200°)."""
    ml = np.arange(-30.0, 30.0 + 1e-9, H)
    ap = np.arange(-30.0, 20.0 + 1e-9, H)
    si = np.arange(-5.0, 75.0 + 1e-9, H)
    S, A, M = np.meshgrid(si, ap, ml, indexing="ij")      # array [k=si, j=-ap..., i=ml]
    rr = np.hypot(A - C_AP, S - C_SI)
    theta = np.degrees(np.arctan2(-(A - C_AP), -(S - C_SI)))        # 0 distal, 90 posterior, +-180 top
    theta = np.where(theta < -30.0, theta + 360.0, theta)           # [-30, 330)
    condyle = ((np.abs(M) >= CONDYLE_ML[0]) & (np.abs(M) <= CONDYLE_ML[1]) & (rr >= R_IN) & (rr <= R_OUT)
               & (theta >= -15.0) & (theta <= 200.0))
    trochlea = ((A >= TROCHLEA_AP[0]) & (A <= TROCHLEA_AP[1]) & (S >= TROCHLEA_SI[0]) & (S <= TROCHLEA_SI[1])
                & (np.abs(M) <= CONDYLE_ML[1]))
    arr = np.zeros(S.shape, np.uint8)
    arr[condyle | trochlea] = L.FEMORAL_CARTILAGE
    # LPS: x = ml, y = -ap (posterior positive), z = si; array i runs along x, j along -y (ap), k along z
    direction = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])
    vol = Volume(arr, [H, H, H], [ml[0], -ap[0], si[0]], direction)
    return vol, dict(ml=M, ap=A, si=S, theta=theta, condyle=condyle, trochlea=trochlea)


def _frame(side):
    e_sup = np.array([0.0, 0, 1])
    e_med = np.array([1.0, 0, 0]) if side == "right" else np.array([-1.0, 0, 0])
    e_ant = -np.cross(e_sup, e_med) if side == "right" else np.cross(e_sup, e_med)
    assert np.allclose(e_ant, [0, -1, 0])
    return KneeFrame(np.zeros(3), e_med, e_ant, e_sup, True)


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic_femoral_cartilage()


@pytest.mark.parametrize("side", ["right", "left"])
def test_synthetic_condyles_every_rule_decides_the_known_voxels(synthetic, side):
    vol, g = synthetic
    out, info, warnings = femoral_subregions(vol, _frame(side))
    assert info is not None and info.notch_found and not warnings
    assert abs(info.condylar_rotation_deg) < 0.5 and abs(info.ml_notch) < 1.0
    ap_post = -R_OUT
    assert info.ap_post == pytest.approx(ap_post, abs=0.6)
    assert info.ap_notch == pytest.approx(TROCHLEA_AP[0], abs=0.6)          # the notch roof = trochlea's back
    assert info.ap_wb_post == pytest.approx(info.ap_notch - 0.6 * (info.ap_notch - info.ap_post), abs=1e-9)
    medial_x = g["ml"] > 0 if side == "right" else g["ml"] < 0
    code = out
    cond, th, ap, si = g["condyle"], g["theta"], g["ap"], g["si"]

    # trochlea plate in front of the notch edge
    troch = g["trochlea"] & ~cond & (ap > info.ap_notch)
    assert troch.sum() > 0.4 * g["trochlea"].sum() and np.all(code[troch] == 11)
    # distal condyles (the weight-bearing surface) medial 12 / lateral 13
    distal = cond & (np.abs(th) <= 12.0) & (ap < info.ap_notch - 1)
    assert distal.sum() > 500
    assert np.all(code[distal & medial_x] == 12) and np.all(code[distal & ~medial_x] == 13)
    # the 60 % band: condylar cartilage from 45 % to 58 % of the way notch -> posterior end is weight-bearing
    # (a 50 % band would make it posterior), from 62 % on it is posterior
    frac = (info.ap_notch - ap) / (info.ap_notch - info.ap_post)
    low = cond & (th < 90) & (si < C_SI)
    band_in = low & (frac > 0.52) & (frac < 0.58)
    band_out = low & (frac > 0.62)
    assert band_in.sum() > 200 and band_out.sum() > 200
    assert np.all(np.isin(code[band_in], (12, 13))) and np.all(np.isin(code[band_out], (14, 15)))
    # the superior line fires: condylar cartilage curling over the top inside the weight-bearing AP band
    # (slab mean SI ~22, top SI 70: line at 0.67*22 + 0.33*70 = 37.9 mm; the curl lies at SI 41-44) is
    # posterior; a 0.6 ratio would put the line at 50.8 mm and leave it weight-bearing
    # (only where the slab also holds the distal surface: the lower arc reaches AP +5.7 mm; in front of it a
    # slab holds nothing but the curl, its mean SI is the curl's own and the line lies above it)
    curl = cond & (th >= 165.0) & (ap >= info.ap_wb_post + 0.5) & (ap <= 5.0)
    assert curl.sum() > 300
    assert info.n_moved_to_posterior >= curl.sum()
    assert np.all(code[curl & medial_x] == 14) and np.all(code[curl & ~medial_x] == 15)
    # the line's top is the highest femoral cartilage (the trochlea's top, SI 70 mm; a 90th percentile: 61 mm)
    assert info.top_si == pytest.approx(TROCHLEA_SI[1], abs=0.5)
    # nothing else changed
    assert np.all(code[vol.array == 0] == 0)
    # the same rule on continuous coordinates (how bone vertices get their region) gives every voxel's region
    k, j, i = np.nonzero(vol.array)
    pts = vol.ijk_to_lps(np.stack([i, j, k], axis=1).astype(float))
    assert np.array_equal(femoral_region_of_points(_frame(side), info, pts), code[k, j, i])


def _centroid(vol, mask):
    k, j, i = np.nonzero(mask)
    return vol.ijk_to_lps(np.array([[i.mean(), j.mean(), k.mean()]]))[0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_real_knee_medial_zones_lie_on_the_medial_side(request, real_knee_labels, side):
    """Sign test on the tibial medial->lateral axis (from the segmentation's own plates, not from the code
    under test): medial weight-bearing / posterior zones sit ~35 mm medial of the lateral ones; and the
    medial side is the patient's left (+x in LPS) for the right knee, right for the left knee."""
    from conftest import mirror_volume

    lab = real_knee_labels if side == "right" else mirror_volume(real_knee_labels)
    result = request.getfixturevalue("real_knee_morphometry" if side == "right" else "left_knee_morphometry")
    assert result.laterality.side == side
    out = result.regions_volume.array
    axis = _centroid(lab, lab.array == L.MEDIAL_TIBIAL_CARTILAGE) - _centroid(lab, lab.array == L.LATERAL_TIBIAL_CARTILAGE)
    axis /= np.linalg.norm(axis)
    assert (axis[0] > 0.8) if side == "right" else (axis[0] < -0.8)
    c = {code: _centroid(lab, out == code) for code in (11, 12, 13, 14, 15)}
    sep_wb = (c[12] - c[13]) @ axis
    sep_post = (c[14] - c[15]) @ axis
    print("%s knee: medial - lateral along the tibial axis: weight-bearing %.1f mm, posterior %.1f mm"
          % (side, sep_wb, sep_post))
    assert sep_wb > 25.0 and sep_post > 25.0       # measured 34 and 37 mm
    # trochlea between the condyles
    assert abs((c[11] - 0.5 * (c[12] + c[13])) @ axis) < 10.0
    # front to back along an axis the code under test does not make: femur -> patella
    ant = _centroid(lab, lab.array == L.PATELLA) - _centroid(lab, lab.array == L.FEMUR)
    ant -= (ant @ axis) * axis
    ant /= np.linalg.norm(ant)
    assert c[11] @ ant > max(c[12] @ ant, c[13] @ ant) + 5.0
    assert min(c[12] @ ant, c[13] @ ant) > max(c[14] @ ant, c[15] @ ant) + 5.0
