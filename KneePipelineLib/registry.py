"""The one model registry: every model the CLI, the pipeline and the Slicer panel can use.

An entry says where the weights come from (a Hugging Face repo at a revision, or files of a public Git
repository at a pinned commit; which files; their sha256 where recorded), what the model expects and emits,
and which backend runs it. Nothing else in the code names a model's files.
Python 3.9-safe (the Slicer panel fills its model list from here).
"""
import re
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Union

NNUNET_REPO = "aagatti/nnunet_knee"
NNUNET_DATASET = "models/Dataset500_KneeMRI"
NNUNET_PREFIX = NNUNET_DATASET + "/nnUNetTrainer__nnUNetResEncUNetMPlans__"
DOSMA_REPO = "aagatti/dosma_bones"
NSM_REPO = "aagatti/ShapeMedKnee"
# The B-score models of the reference pipeline: BSCORE_MODELS/ of anoopai/KneePipeline, pinned at the commit
# that added the April 2025 models (2025-05-04); the files are byte-identical on main since (checked up to
# 2fd0a6b, 2025-11-12).
BSCORE_REPO = "anoopai/KneePipeline"
BSCORE_COMMIT = "57da029936562c1fdb0b954111f685c9b8a76ead"
RAW_GITHUB = "https://raw.githubusercontent.com"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_commit(revision: Optional[str]) -> bool:
    """A full 40-hex commit hash (a pinned revision), as opposed to a branch or tag name."""
    return bool(revision) and bool(_COMMIT.match(str(revision)))


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face model repository; ``revision`` is a branch until a commit is pinned."""
    repo_id: str
    revision: str = "main"                  # a 40-hex commit pins it; a branch name follows the branch
    allow_patterns: tuple = ()              # only these files come down
    subfolder: str = ""                     # model root inside the repo snapshot
    sha256: Dict[str, str] = field(default_factory=dict)   # repo path -> sha256, where recorded
    size_bytes: Optional[int] = None
    gated: bool = False
    kind: ClassVar[str] = "hub"

    @property
    def pinned(self) -> bool:
        return is_commit(self.revision)


@dataclass(frozen=True)
class GitFilesSource:
    """Files of a public Git repository at a pinned commit, fetched one raw-file URL each
    (``<base_url>/<repo_id>/<revision>/<path>``); every file has a recorded sha256 checked before use."""
    repo_id: str                            # owner/name on the Git host
    revision: str                           # the pinned commit (40 hex digits), never a branch
    allow_patterns: tuple = ()              # exact repository paths (no wildcards)
    subfolder: str = ""                     # model root inside the repository
    sha256: Dict[str, str] = field(default_factory=dict)   # repo path -> sha256, one per file (required)
    size_bytes: Optional[int] = None
    base_url: str = RAW_GITHUB
    gated: bool = False
    kind: ClassVar[str] = "git_files"

    def __post_init__(self):
        if not is_commit(self.revision):
            raise ValueError("GitFilesSource %s: revision must be a full commit hash, got %r" % (self.repo_id, self.revision))
        unrecorded = [p for p in self.allow_patterns if p not in self.sha256 or any(c in p for c in "*?[")]
        if unrecorded:
            raise ValueError("GitFilesSource %s: every file needs an exact path and a sha256: %s" % (self.repo_id, unrecorded))

    @property
    def pinned(self) -> bool:
        return True

    def url(self, path: str, base_url: Optional[str] = None) -> str:
        return "%s/%s/%s/%s" % ((base_url or self.base_url).rstrip("/"), self.repo_id, self.revision, path)


ModelSource = Union[HubSource, GitFilesSource]


@dataclass(frozen=True)
class ModelEntry:
    id: str
    display_name: str
    kind: str                               # "segmentation" | "shape" | "bscore"
    backend: str                            # "nnunet" | "nnunet_cascade" | "keras_unet" | "ensemble" | "nsm" | "bscore"
    source: Optional[ModelSource]
    label_convention: str = "dosma"
    input_expectation: str = ""
    plane: Optional[str] = None             # 2D models: sagittal | coronal | axial
    # The voxel frame the network was trained in: DOSMA orientation codes of the numpy array axes it saw
    # (segmentation/frame.py); every image is put in this frame exactly (permutation + flips) and the
    # labels brought back. () = no frame (the ensemble: its members have theirs).
    frame: tuple = ()
    acquisition_plane: Optional[str] = None  # the plane the training images were acquired in
    config: Dict[str, object] = field(default_factory=dict)
    licence: str = ""
    notes: str = ""
    cpu_seconds: Optional[float] = None     # measured, once known
    gpu_seconds: Optional[float] = None
    default: bool = False

    @property
    def gated(self) -> bool:
        return bool(self.source and self.source.gated)


def _bscore_source(folder: str, sha256: str, size_bytes: int) -> GitFilesSource:
    path = "BSCORE_MODELS/%s/model.json" % folder
    return GitFilesSource(BSCORE_REPO, BSCORE_COMMIT, (path,), "BSCORE_MODELS/" + folder, {path: sha256}, size_bytes)


_BSCORE_BC = ("NSM_Orig_BScore_Bone_Cartilage_April_17_2025",
              "1294b14e8ab6f1e12690e7368ca96f22f7e6c7a0967727ed0da9274f603e7ad8", 15483)
_BSCORE_BONE = ("NSM_Orig_BScore_Bone_Only_April_18_2025",
                "daa237197154d2ba674318179bb2fb98da7e95b44a3663572255c508afc3ed2d", 15461)


def _nnunet_patterns(configs, folds=("1",), checkpoints=("checkpoint_best.pth", "checkpoint_final.pth")):
    pats = []
    for c in configs:
        base = NNUNET_PREFIX + c + "/"
        pats += [base + "dataset.json", base + "plans.json", base + "model_config.json"]
        pats += [base + "fold_%s/%s" % (f, ck) for f in folds for ck in checkpoints]
    return tuple(pats)


# Model frames (DOSMA orientation codes of the numpy array axes, see segmentation/frame.py), as the
# reference feeds each network: nnU-Net gets DOSMA's to_sitk("sagittal") array (OpenMSK steps/segment.py);
# the 2D nets their class's TARGET_ORIENTATION (DOSMA bone_seg models/stanford_qdess_bone.py), slices along
# the last axis, each slice (rows = axis 0, columns = axis 1) resized to config["size"].
FRAME_NNUNET = ("LR", "SI", "AP")
FRAME_DOSMA = {"sagittal": ("SI", "AP", "LR"), "coronal": ("LR", "SI", "AP"), "axial": ("LR", "AP", "SI")}

_KNEE_3D = ("3D sagittal knee MRI (DESS/qDESS-like), ~0.3x0.3x0.8 mm; any voxel order is reoriented exactly "
            "into the model's frame, then resampled by nnU-Net to its spacing")
_2D = "3D knee MRI; slices resized to the model size, whole-volume z-score; trained on qDESS (root-sum-of-squares)"

MODELS: List[ModelEntry] = [
    ModelEntry("nnunet_fullres", "nnU-Net ResEnc-M 3D full resolution", "segmentation", "nnunet",
               HubSource(NNUNET_REPO, allow_patterns=_nnunet_patterns(["3d_fullres"]), subfolder=NNUNET_DATASET,
                         size_bytes=816_000_000),
               input_expectation=_KNEE_3D, frame=FRAME_NNUNET, acquisition_plane="sagittal",
               config={"configurations": ["3d_fullres"], "folds": [1], "dataset": "Dataset500_KneeMRI",
                       "trainer": "nnUNetTrainer", "plans": "nnUNetResEncUNetMPlans"},
               licence="See the model card of aagatti/nnunet_knee.",
               notes="Reference: mean Dice ~0.92; ~70 s on a Tesla T4.", default=True),
    ModelEntry("nnunet_cascade", "nnU-Net ResEnc-M cascade (low-res, then full-res)", "segmentation",
               "nnunet_cascade",
               HubSource(NNUNET_REPO, allow_patterns=_nnunet_patterns(["3d_lowres", "3d_cascade_fullres"]),
                         subfolder=NNUNET_DATASET, size_bytes=1_600_000_000),
               input_expectation=_KNEE_3D, frame=FRAME_NNUNET, acquisition_plane="sagittal",
               config={"configurations": ["3d_lowres", "3d_cascade_fullres"], "folds": [1],
                       "dataset": "Dataset500_KneeMRI", "trainer": "nnUNetTrainer", "plans": "nnUNetResEncUNetMPlans"},
               licence="See the model card of aagatti/nnunet_knee.", notes="~160 s on a Tesla T4."),
    ModelEntry("dosma_sagittal", "DOSMA 2D U-Net, sagittal", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("sagittal_best_model.h5",), size_bytes=324_000_000),
               input_expectation=_2D, plane="sagittal", config={"file": "sagittal_best_model.h5", "size": [512, 512]},
               frame=FRAME_DOSMA["sagittal"], acquisition_plane="sagittal"),
    ModelEntry("dosma_coronal", "DOSMA 2D U-Net, coronal", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("coronal_best_model.h5",), size_bytes=165_000_000),
               input_expectation=_2D, plane="coronal", config={"file": "coronal_best_model.h5", "size": [160, 512]},
               frame=FRAME_DOSMA["coronal"], acquisition_plane="sagittal"),
    ModelEntry("dosma_axial", "DOSMA 2D U-Net, axial", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("axial_best_model.h5",), size_bytes=165_000_000),
               input_expectation=_2D, plane="axial", config={"file": "axial_best_model.h5", "size": [160, 512]},
               frame=FRAME_DOSMA["axial"], acquisition_plane="sagittal"),
    ModelEntry("goyal_sagittal", "Goyal 2024 2D U-Net, sagittal (bone + cartilage)", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("Goyal_Bone_Cart_July_2024_best_model.h5",)),
               input_expectation=_2D, plane="sagittal",
               config={"file": "Goyal_Bone_Cart_July_2024_best_model.h5", "size": [512, 512]},
               frame=FRAME_DOSMA["sagittal"], acquisition_plane="sagittal",
               notes="The reference web app's recommended default; reported identical to sagittal_best_model.h5."),
    ModelEntry("dosma_ensemble", "DOSMA 2D U-Nets, sagittal + coronal + axial ensemble", "segmentation", "ensemble",
               None, input_expectation=_2D,
               config={"members": ["dosma_sagittal", "dosma_coronal", "dosma_axial"],
                       # the reference's STAPLE exclusions (list_idx_not_include_STAPLE) as trust weights:
                       # coronal does not vote on label 1, axial not on 3-6 (model numbering)
                       "trust": {"dosma_coronal": {1: 0.0}, "dosma_axial": {3: 0.0, 4: 0.0, 5: 0.0, 6: 0.0}}}),
    ModelEntry("nsm_bone_cartilage", "NSM femur bone + cartilage (model 647)", "shape", "nsm",
               HubSource(NSM_REPO, allow_patterns=("*647*/model_params_config.json", "*647*/model/2000.pth"),
                         gated=True),
               config={"epoch": 2000, "objects": ["bone", "cartilage"], "bscore": "bscore_bone_cartilage"}),
    ModelEntry("nsm_bone_only", "NSM femur bone only (model 551)", "shape", "nsm",
               HubSource(NSM_REPO, allow_patterns=("*551*/model_params_config.json", "*551*/model/1150.pth"),
                         gated=True),
               config={"epoch": 1150, "objects": ["bone"], "bscore": "bscore_bone_only"}),
    ModelEntry("bscore_bone_cartilage", "B-score for NSM bone + cartilage (Apr 17 2025)", "bscore", "bscore",
               _bscore_source(*_BSCORE_BC),
               config={"folder": _BSCORE_BC[0], "sha256": _BSCORE_BC[1], "nsm": "nsm_bone_cartilage"},
               notes="The reference pipeline's BSCORE_MODELS/ (GitHub anoopai/KneePipeline, pinned commit)."),
    ModelEntry("bscore_bone_only", "B-score for NSM bone only (Apr 18 2025)", "bscore", "bscore",
               _bscore_source(*_BSCORE_BONE),
               config={"folder": _BSCORE_BONE[0], "sha256": _BSCORE_BONE[1], "nsm": "nsm_bone_only"},
               notes="The reference pipeline's BSCORE_MODELS/ (GitHub anoopai/KneePipeline, pinned commit)."),
]

_BY_ID = {m.id: m for m in MODELS}


def get_model(model_id: str) -> ModelEntry:
    from .errors import ConfigurationError

    try:
        return _BY_ID[model_id]
    except KeyError:
        raise ConfigurationError("Unknown model %r." % model_id,
                                 hint="Known models: %s (kneepipeline models)." % ", ".join(_BY_ID))


def list_models(kind: Optional[str] = None) -> List[ModelEntry]:
    return [m for m in MODELS if kind is None or m.kind == kind]


def default_segmentation_model() -> ModelEntry:
    return next(m for m in MODELS if m.default)
