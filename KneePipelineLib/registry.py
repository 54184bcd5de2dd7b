"""The one model registry: every model the CLI, the pipeline and the Slicer panel can use.

An entry says where the weights come from (Hugging Face repo, pinned revision, which files), what the
model expects and emits, and which backend runs it. Nothing else in the code names a model's files.
Python 3.9-safe (the Slicer panel fills its model list from here).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

NNUNET_REPO = "aagatti/nnunet_knee"
NNUNET_DATASET = "models/Dataset500_KneeMRI"
NNUNET_PREFIX = NNUNET_DATASET + "/nnUNetTrainer__nnUNetResEncUNetMPlans__"
DOSMA_REPO = "aagatti/dosma_bones"
NSM_REPO = "aagatti/ShapeMedKnee"


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str = "main"                  # pinned commit once known; "main" until verified
    allow_patterns: tuple = ()              # only these files come down
    subfolder: str = ""                     # model root inside the repo snapshot
    sha256: Dict[str, str] = field(default_factory=dict)   # repo path -> sha256, where recorded
    size_bytes: Optional[int] = None
    gated: bool = False


@dataclass(frozen=True)
class ModelEntry:
    id: str
    display_name: str
    kind: str                               # "segmentation" | "shape" | "bscore"
    backend: str                            # "nnunet" | "nnunet_cascade" | "keras_unet" | "ensemble" | "nsm" | "bscore"
    source: Optional[HubSource]
    label_convention: str = "dosma"
    input_expectation: str = ""
    plane: Optional[str] = None             # 2D models: sagittal | coronal | axial
    config: Dict[str, object] = field(default_factory=dict)
    licence: str = ""
    notes: str = ""
    cpu_seconds: Optional[float] = None     # measured, once known
    gpu_seconds: Optional[float] = None
    default: bool = False

    @property
    def gated(self) -> bool:
        return bool(self.source and self.source.gated)


def _nnunet_patterns(configs, folds=("1",), checkpoints=("checkpoint_best.pth", "checkpoint_final.pth")):
    pats = []
    for c in configs:
        base = NNUNET_PREFIX + c + "/"
        pats += [base + "dataset.json", base + "plans.json", base + "model_config.json"]
        pats += [base + "fold_%s/%s" % (f, ck) for f in folds for ck in checkpoints]
    return tuple(pats)


_KNEE_3D = "3D sagittal knee MRI (DESS/qDESS-like), ~0.3x0.3x0.8 mm; any orientation is resampled by nnU-Net"
_2D = "3D knee MRI; slices resized to the model size, whole-volume z-score; trained on qDESS (root-sum-of-squares)"

MODELS: List[ModelEntry] = [
    ModelEntry("nnunet_fullres", "nnU-Net ResEnc-M 3D full resolution", "segmentation", "nnunet",
               HubSource(NNUNET_REPO, allow_patterns=_nnunet_patterns(["3d_fullres"]), subfolder=NNUNET_DATASET,
                         size_bytes=816_000_000),
               input_expectation=_KNEE_3D,
               config={"configurations": ["3d_fullres"], "folds": [1], "dataset": "Dataset500_KneeMRI",
                       "trainer": "nnUNetTrainer", "plans": "nnUNetResEncUNetMPlans"},
               licence="See the model card of aagatti/nnunet_knee.",
               notes="Reference: mean Dice ~0.92; ~70 s on a Tesla T4.", default=True),
    ModelEntry("nnunet_cascade", "nnU-Net ResEnc-M cascade (low-res, then full-res)", "segmentation",
               "nnunet_cascade",
               HubSource(NNUNET_REPO, allow_patterns=_nnunet_patterns(["3d_lowres", "3d_cascade_fullres"]),
                         subfolder=NNUNET_DATASET, size_bytes=1_600_000_000),
               input_expectation=_KNEE_3D,
               config={"configurations": ["3d_lowres", "3d_cascade_fullres"], "folds": [1],
                       "dataset": "Dataset500_KneeMRI", "trainer": "nnUNetTrainer", "plans": "nnUNetResEncUNetMPlans"},
               licence="See the model card of aagatti/nnunet_knee.", notes="~160 s on a Tesla T4."),
    ModelEntry("dosma_sagittal", "DOSMA 2D U-Net, sagittal", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("sagittal_best_model.h5",), size_bytes=324_000_000),
               input_expectation=_2D, plane="sagittal", config={"file": "sagittal_best_model.h5", "size": [512, 512]}),
    ModelEntry("dosma_coronal", "DOSMA 2D U-Net, coronal", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("coronal_best_model.h5",), size_bytes=165_000_000),
               input_expectation=_2D, plane="coronal", config={"file": "coronal_best_model.h5", "size": [160, 512]}),
    ModelEntry("dosma_axial", "DOSMA 2D U-Net, axial", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("axial_best_model.h5",), size_bytes=165_000_000),
               input_expectation=_2D, plane="axial", config={"file": "axial_best_model.h5", "size": [160, 512]}),
    ModelEntry("goyal_sagittal", "Goyal 2024 2D U-Net, sagittal (bone + cartilage)", "segmentation", "keras_unet",
               HubSource(DOSMA_REPO, allow_patterns=("Goyal_Bone_Cart_July_2024_best_model.h5",)),
               input_expectation=_2D, plane="sagittal",
               config={"file": "Goyal_Bone_Cart_July_2024_best_model.h5", "size": [512, 512]},
               notes="The reference web app's recommended default; reported identical to sagittal_best_model.h5."),
    ModelEntry("dosma_ensemble", "DOSMA 2D U-Nets, sagittal + coronal + axial ensemble", "segmentation", "ensemble",
               None, input_expectation=_2D,
               config={"members": ["dosma_sagittal", "dosma_coronal", "dosma_axial"]}),
    ModelEntry("nsm_bone_cartilage", "NSM femur bone + cartilage (model 647)", "shape", "nsm",
               HubSource(NSM_REPO, allow_patterns=("*647*/model_params_config.json", "*647*/model/2000.pth"),
                         gated=True),
               config={"epoch": 2000, "objects": ["bone", "cartilage"], "bscore": "bscore_bone_cartilage"}),
    ModelEntry("nsm_bone_only", "NSM femur bone only (model 551)", "shape", "nsm",
               HubSource(NSM_REPO, allow_patterns=("*551*/model_params_config.json", "*551*/model/1150.pth"),
                         gated=True),
               config={"epoch": 1150, "objects": ["bone"], "bscore": "bscore_bone_only"}),
    ModelEntry("bscore_bone_cartilage", "B-score for NSM bone + cartilage (Apr 17 2025)", "bscore", "bscore", None,
               config={"folder": "NSM_Orig_BScore_Bone_Cartilage_April_17_2025",
                       "sha256": "1294b14e8ab6f1e12690e7368ca96f22f7e6c7a0967727ed0da9274f603e7ad8",
                       "nsm": "nsm_bone_cartilage"},
               notes="From the reference pipeline's public repositories (BSCORE_MODELS/); not on the hub."),
    ModelEntry("bscore_bone_only", "B-score for NSM bone only (Apr 18 2025)", "bscore", "bscore", None,
               config={"folder": "NSM_Orig_BScore_Bone_Only_April_18_2025",
                       "sha256": "daa237197154d2ba674318179bb2fb98da7e95b44a3663572255c508afc3ed2d",
                       "nsm": "nsm_bone_only"},
               notes="From the reference pipeline's public repositories (BSCORE_MODELS/); not on the hub."),
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
