"""One options type for the CLI, the pipeline and the Slicer panel (Python 3.9-safe, stdlib only)."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import ConfigurationError

NSM_CHOICES = ("none", "bone_cartilage", "bone_only", "both")
NSM_PRECISIONS = ("fp32", "bf16")
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
MESH_FORMATS = ("vtp", "vtk")
CHECKPOINTS = ("best", "final")
# Segmentation profiles (docs/SPEED.md): "fast" = nnU-Net sliding-window tile step 1.0 instead of 0.5
# (80 -> 27 tiles for ResEnc-M on a 384x384x160 knee; measured Dice cost in docs/SPEED.md). 2D U-Nets: no tiles.
PROFILES = ("default", "fast")
FAST_STEP_SIZE = 1.0
QDESS_KEYS = ("tr_ms", "te_ms", "flip_deg", "tg_us", "gl_area", "t1_ms", "diffusivity_m2_s")
# The pipeline's steps, in order (pipeline.STEPS must match; Testing/test_cli_errors.py checks it): the names
# --step-timeout accepts.
STEP_NAMES = ("input", "segmentation", "morphometry", "t2", "nsm", "results", "report", "bundle")
# `run` flags that are not "--" + the field name (commands/_common.py); to_argv must use the CLI's spelling.
CLI_FLAGS = {"timeout_s": "--timeout"}
CLI_BOOL_FLAGS = {"t2_drop_first_echo": {False: "--keep-first-echo"}}


@dataclass
class RunOptions:
    """Everything that decides what a run computes. Paths are strings so the type is JSON-friendly."""

    out_dir: str = ""
    image: Optional[str] = None            # MRI volume / DICOM folder / zip (segmentation input)
    labels: Optional[str] = None           # an existing label map (skips segmentation)
    label_convention: str = "dosma"        # dosma | pymskt | path to a JSON map
    model: str = "nnunet_fullres"          # id in the model registry
    model_dir: Optional[str] = None        # local model folder overriding the download
    device: str = "auto"
    threads: Optional[int] = None
    folds: Optional[List[int]] = None      # None: the model's published folds
    checkpoint: str = "best"
    tta: bool = False
    step_size: float = 0.5
    profile: str = "default"               # default | fast (PROFILES; fast = tile step 1.0)
    batch_size: Optional[int] = None       # 2D U-Nets: slices per batch (None: 4 on CPU, 16 on GPU)
    postprocess: bool = True
    cpu_fallback: bool = True              # retry on CPU after a GPU out-of-memory error
    offline: bool = False                  # never contact the hub
    bone_smooth_var_mm2: float = 0.5       # Gaussian variance before contouring bones
    cartilage_smooth_var_mm2: float = 0.3125
    mesh_format: str = "vtp"
    echoes: Optional[List[str]] = None     # T2: multi-echo series / 4D volume / qDESS
    echo_times_ms: Optional[List[float]] = None
    t2_drop_first_echo: bool = True
    qdess_params: Optional[Dict[str, float]] = None   # qDESS: tr_ms, te_ms, flip_deg, tg_us, gl_area, t1_ms
    # regional T2 statistics use lo < T2 < hi only (the reference's T2_MIN_VALID / T2_MAX_VALID: 0, 80 ms)
    t2_stats_range_ms: List[float] = field(default_factory=lambda: [0.0, 80.0])
    nsm: str = "none"
    nsm_dir: Optional[str] = None
    bscore_dir: Optional[str] = None
    # NSM fit: None = the model config's num_iterations_recon / n_samples_latent_recon (points per step, all
    # surfaces together) / convergence_patience_recon, as the reference reads them (shape/recon.py)
    nsm_iterations: Optional[int] = None
    nsm_samples: Optional[int] = None
    nsm_patience: Optional[int] = None
    nsm_mesh_resolution: int = 256         # NSM meshes: fine grid over [-1,1]^3 (0 = latent only, no meshes)
    nsm_precision: str = "fp32"            # NSM fit arithmetic: fp32 (published) or bf16 (faster, inexact)
    seed: int = 0
    report: bool = True
    resume: bool = False
    timeout_s: Optional[float] = None      # whole-run limit
    step_timeouts_s: Optional[Dict[str, float]] = None   # per-step limits, e.g. {"segmentation": 900}

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> "RunOptions":
        self._validate_numbers()
        if not self.out_dir:
            raise ConfigurationError("No output folder given.", hint="Pass --out DIR.")
        if not self.image and not self.labels:
            raise ConfigurationError("No input given.", hint="Pass --image (an MRI) or --labels (a label map).")
        if self.nsm not in NSM_CHOICES:
            raise ConfigurationError("Unknown NSM option %r." % self.nsm, hint="Use one of: %s." % ", ".join(NSM_CHOICES))
        if self.device not in DEVICE_CHOICES:
            raise ConfigurationError("Unknown device %r." % self.device, hint="Use one of: %s." % ", ".join(DEVICE_CHOICES))
        if self.mesh_format not in MESH_FORMATS:
            raise ConfigurationError("Unknown mesh format %r." % self.mesh_format, hint="Use vtp or vtk.")
        if self.checkpoint not in CHECKPOINTS:
            raise ConfigurationError("Unknown checkpoint %r." % self.checkpoint, hint="Use best or final.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigurationError("Batch size must be >= 1, got %r." % self.batch_size)
        if not (0.0 < self.step_size <= 1.0):
            raise ConfigurationError("Tile step size must be in (0, 1], got %r." % self.step_size)
        if self.profile not in PROFILES:
            raise ConfigurationError("Unknown profile %r." % self.profile, hint="Use one of: %s." % ", ".join(PROFILES))
        if self.profile == "fast" and self.step_size != RunOptions.step_size:
            raise ConfigurationError("--profile fast sets the tile step to %s; --step-size %s contradicts it."
                                     % (FAST_STEP_SIZE, self.step_size),
                                     hint="Leave --step-size out with --profile fast, or use --profile default.")
        for name in ("bone_smooth_var_mm2", "cartilage_smooth_var_mm2"):
            if getattr(self, name) < 0:
                raise ConfigurationError("%s must be >= 0." % name)
        if any(v is not None and v < 1 for v in (self.nsm_iterations, self.nsm_samples, self.nsm_patience)):
            raise ConfigurationError("NSM iterations, samples and patience must be positive.")
        if self.nsm_mesh_resolution != 0 and self.nsm_mesh_resolution < 16:
            raise ConfigurationError("NSM mesh resolution must be 0 (no meshes) or >= 16, got %r."
                                     % self.nsm_mesh_resolution)
        if self.nsm_precision not in NSM_PRECISIONS:
            raise ConfigurationError("Unknown NSM precision %r." % self.nsm_precision, hint="Use fp32 or bf16.")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigurationError("Timeout must be positive.")
        unknown = sorted(set(self.qdess_params or {}) - set(QDESS_KEYS))
        if unknown:
            raise ConfigurationError("Unknown qDESS parameter(s): %s." % ", ".join(unknown),
                                     hint="Use: %s." % ", ".join(QDESS_KEYS))
        self._validate_t2_stats_range()
        for step, limit in (self.step_timeouts_s or {}).items():
            if step not in STEP_NAMES:
                raise ConfigurationError("--step-timeout names no step of the pipeline: %r." % step,
                                         hint="Use one of: %s (e.g. --step-timeout segmentation=900)."
                                              % ", ".join(STEP_NAMES))
            if not limit or limit <= 0:
                raise ConfigurationError("The time limit of step %r must be positive." % step)
        return self

    def _validate_numbers(self) -> None:
        """Every number a finite value of its type, counts at least 1: a clear message naming the option
        (NaN compares false with every bound, so it is refused here, before any bound check)."""
        import math

        flags = dict(CLI_FLAGS, step_timeouts_s="--step-timeout", qdess_params="--qdess-param")

        def flag(name: str) -> str:
            return flags.get(name, "--" + name.replace("_", "-"))

        def finite(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigurationError("%s must be a finite number, got %r." % (flag(name), value),
                                         hint="Give a plain number (not nan or inf); see kneepipeline run --help.")

        for name in ("bone_smooth_var_mm2", "cartilage_smooth_var_mm2", "step_size"):
            finite(name, getattr(self, name))
        for name in ("timeout_s",):
            if getattr(self, name) is not None:
                finite(name, getattr(self, name))
        for name in ("threads", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigurationError("%s must be a whole number of at least 1, got %r." % (flag(name), value),
                                         hint="Leave %s out to use the default." % flag(name))
        for name in ("nsm_iterations", "nsm_samples", "nsm_patience", "nsm_mesh_resolution", "seed"):
            value = getattr(self, name)   # None: the model's own default
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigurationError("%s must be a whole number, got %r." % (flag(name), value))
        for step, limit in (self.step_timeouts_s or {}).items():
            finite("step_timeouts_s", limit)
        for key, value in (self.qdess_params or {}).items():
            finite("qdess_params", value)
        for value in self.echo_times_ms or []:
            finite("echo_times_ms", value)

    def _validate_t2_stats_range(self) -> None:
        import math

        rng = self.t2_stats_range_ms
        if (not isinstance(rng, (list, tuple)) or len(rng) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rng)):
            raise ConfigurationError("--t2-stats-range-ms takes two finite numbers (low high), got %r." % (rng,),
                                     hint="E.g. --t2-stats-range-ms 0 80 (the default, as the reference).")
        if not rng[0] < rng[1]:
            raise ConfigurationError("--t2-stats-range-ms: the low end %r must be below the high end %r."
                                     % (rng[0], rng[1]))

    def effective_step_size(self) -> float:
        """The nnU-Net sliding-window step the profile implies (fast: 1.0; default: step_size)."""
        return FAST_STEP_SIZE if self.profile == "fast" else float(self.step_size)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigurationError("Unknown option(s): %s." % ", ".join(unknown))
        return cls(**data)

    def computation_key(self) -> Dict[str, Any]:
        """Options that change results (used by --resume to decide whether outputs still match)."""
        d = self.to_dict()
        for k in ("out_dir", "resume", "threads", "timeout_s", "report", "offline", "cpu_fallback", "batch_size",
                  "step_timeouts_s"):
            d.pop(k, None)
        return d

    def to_argv(self) -> List[str]:
        """The ``kneepipeline run`` arguments that reproduce these options."""
        argv = ["run", "--out", self.out_dir]
        default = RunOptions()
        for f in dataclasses.fields(self):
            if f.name == "out_dir":
                continue
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            flag = CLI_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
            if isinstance(value, bool) and f.name in CLI_BOOL_FLAGS:
                argv.append(CLI_BOOL_FLAGS[f.name][value])
            elif isinstance(value, bool):
                argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
            elif isinstance(value, list):
                argv.append(flag)
                argv.extend(str(v) for v in value)
            elif isinstance(value, dict):
                dict_flag = "--step-timeout" if f.name == "step_timeouts_s" else "--qdess-param"
                for k, v in value.items():
                    argv.extend([dict_flag, "%s=%s" % (k, v)])
            elif value is not None:
                argv.extend([flag, str(value)])
        return argv


def option_fields() -> List[Any]:
    return list(dataclasses.fields(RunOptions))
