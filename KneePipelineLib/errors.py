"""One error taxonomy for the whole pipeline (Python 3.9-safe, standard library only).

Every failure a user can meet is a :class:`KneePipelineError` subclass carrying a *category*
(stable machine id), a plain *message* naming the problem and a *hint* saying what to do.
Classification is by exception type, never by matching text in messages or logs.
"""
from typing import Any, Dict, Optional

# Exit codes are stable: scripts and the Slicer module may rely on them.
EXIT_CODES = {
    "usage": 2,                  # an argument the command line parser refused (argparse's own exit code)
    "input_unreadable": 10,
    "unsupported_format": 11,
    "dicom_problem": 12,
    "invalid_input": 13,
    "missing_structures": 14,
    "label_convention": 15,
    "model_missing": 20,
    "model_gated": 21,
    "model_invalid": 22,
    "gpu_out_of_memory": 30,
    "segmentation_failed": 31,
    "nsm_failed": 32,
    "t2_failed": 33,
    "insufficient_memory": 34,
    "output_unwritable": 40,
    "configuration": 41,
    "busy": 42,
    "timeout": 50,
    "cancelled": 51,
    "internal": 70,
}


class KneePipelineError(Exception):
    """Base class: a failure with a user-facing message and a hint."""

    category = "internal"
    default_hint = "This is a bug in KneePipeline; please report it with the log."

    def __init__(self, message: str, hint: Optional[str] = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.details = details

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.category]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "category": self.category,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }

    def __str__(self) -> str:
        return "%s (%s)" % (self.message, self.hint) if self.hint else self.message


class InputUnreadableError(KneePipelineError):
    category = "input_unreadable"
    default_hint = "Check that the file exists, is complete (not truncated) and is readable."


class UnsupportedFormatError(KneePipelineError):
    category = "unsupported_format"
    default_hint = "Use NIfTI (.nii/.nii.gz), NRRD (.nrrd), a DICOM series folder, a DICOM file or a zip of a DICOM series."


class DicomError(KneePipelineError):
    category = "dicom_problem"
    default_hint = "Check that the folder holds one complete DICOM series (all slices, with pixel data)."


class InvalidInputError(KneePipelineError):
    category = "invalid_input"
    default_hint = "The pipeline needs a 3D knee MRI or label map; check the input file."


class MissingStructuresError(KneePipelineError):
    category = "missing_structures"
    default_hint = "Check that the label map is a knee segmentation and that the label convention is right."


class LabelConventionError(KneePipelineError):
    category = "label_convention"
    default_hint = "Choose the convention that matches the label map (--label-convention dosma|pymskt|FILE.json)."


class ModelMissingError(KneePipelineError):
    category = "model_missing"
    default_hint = "Download the model (kneepipeline models --download ID) or point --model-dir at a local copy."


class ModelGatedError(KneePipelineError):
    category = "model_gated"
    default_hint = ("This model is gated on the Hugging Face hub: accept its terms on the model page, then set "
                    "HF_TOKEN or run `hf auth login`.")


class ModelInvalidError(KneePipelineError):
    category = "model_invalid"
    default_hint = "The model files are incomplete or corrupt: delete them and download again."


class GpuOutOfMemoryError(KneePipelineError):
    category = "gpu_out_of_memory"
    default_hint = "Close other GPU programs, use a smaller tile step or run on the CPU (--device cpu)."


class SegmentationError(KneePipelineError):
    category = "segmentation_failed"
    default_hint = "Check the input image (a knee MRI of the kind the model was trained on)."


class NsmError(KneePipelineError):
    category = "nsm_failed"
    default_hint = "Check the femur and femoral cartilage segmentations; the shape model needs both closed surfaces."


class T2Error(KneePipelineError):
    category = "t2_failed"
    default_hint = "Check the echo images and their echo times."


class OutputUnwritableError(KneePipelineError):
    category = "output_unwritable"
    default_hint = "Choose an output folder you can write to, outside the input folder."


class InsufficientMemoryError(KneePipelineError):
    category = "insufficient_memory"
    default_hint = ("The step was refused before it started because this machine does not have the memory it "
                    "needs; close other programs, use a machine with more memory, or check the input's voxel "
                    "spacing.")


class BusyError(KneePipelineError):
    category = "busy"
    default_hint = "Another run is writing into this output folder; wait for it to finish or choose another --out."


class ConfigurationError(KneePipelineError):
    category = "configuration"
    default_hint = "Check the command-line options (kneepipeline --help)."


class UsageError(KneePipelineError):
    """The command line itself: an unknown option, a missing argument, a value of the wrong type."""

    category = "usage"
    default_hint = "See `kneepipeline COMMAND --help` (it starts with examples)."


class PipelineTimeoutError(KneePipelineError):
    category = "timeout"
    default_hint = "Raise the time limit (--timeout) or run on a GPU."


class CancelledError(KneePipelineError):
    category = "cancelled"
    default_hint = "The run was cancelled; start it again to resume."


class InternalError(KneePipelineError):
    category = "internal"


def _disk_errnos():
    import errno
    return {getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG") if hasattr(errno, n)}


_DISK_ERRNOS = _disk_errnos()


def classify(exc: BaseException) -> KneePipelineError:
    """Map any exception to the taxonomy by its *type* (never by its text)."""
    if isinstance(exc, KneePipelineError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return CancelledError("The run was interrupted.")
    if isinstance(exc, MemoryError):
        return InternalError("The machine ran out of memory.", hint="Close other programs or use a machine with more memory.")
    try:  # torch's OOM is a type, not a message
        import sys
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
            return GpuOutOfMemoryError("The GPU ran out of memory.")
    except Exception:  # pragma: no cover - defensive
        pass
    if isinstance(exc, PermissionError):
        return OutputUnwritableError("Permission denied: %s" % (getattr(exc, "filename", None) or exc))
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:  # the machine, not the code: classified by errno
        import os
        return OutputUnwritableError("Cannot write %s: %s." % (getattr(exc, "filename", None) or "an output",
                                                               os.strerror(exc.errno)),
                                     hint="Free disk space or choose another output folder (--out).")
    return InternalError("Unexpected error: %s: %s" % (type(exc).__name__, exc))
