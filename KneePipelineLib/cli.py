"""``kneepipeline`` / ``python -m KneePipelineLib``: one entry point, subcommands in ``commands/``.

Each module in :mod:`KneePipelineLib.commands` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``main(args, progress) -> int``, and optionally ``USAGE`` (one short usage line), ``EXAMPLES`` (command lines
a user can copy; ``--help`` starts with them) and ``DESCRIPTION``. Here, once for every command:

* the face of the progress (``--progress auto|bar|json|none``, see :mod:`.progress`) and ``--json`` (the
  final result object alone on stdout) are added to the command's ``output`` options;
* errors are caught: a typed ``error`` event (when JSON lines are on), the message and hint on stderr, the
  category's exit code -- argument errors included (exit 2, category ``usage``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
import textwrap
from typing import Any, Dict, List, Optional

from . import __version__
from .errors import KneePipelineError, classify
from .progress import PROGRESS_ENV, PROGRESS_MODES, Face, Progress, choose_face

COMMAND_ORDER = ["run", "segment", "analyze", "t2", "nsm", "batch", "report", "models", "doctor",
                 "sample-data", "demo"]
EXAMPLES = [
    "kneepipeline demo",
    "kneepipeline analyze --labels knee_labels.nrrd --label-convention pymskt --out run1",
    "kneepipeline run --image knee_dess.nii.gz --echoes mese_t2/ --out run2",
    "kneepipeline analyze --labels knee_labels.nii.gz --out run1 --json | jq .out_dir",
]
USAGE_EXIT_CODE = 2   # argparse's convention, kept for argument errors


class UsageProblem(Exception):
    """An argument error found by argparse (raised instead of argparse's print-and-exit)."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.message = message
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageProblem(message, self.prog)


class _CurrentStderr:
    """A stream that is whatever ``sys.stderr`` is now (so log records go above the progress bar)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _command_modules():
    from . import commands

    mods = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module("%s.%s" % (commands.__name__, info.name))
        if hasattr(mod, "NAME"):
            mods[mod.NAME] = mod
    order = {n: i for i, n in enumerate(COMMAND_ORDER)}
    return dict(sorted(mods.items(), key=lambda kv: order.get(kv[0], 99)))


def _examples_block(examples: List[str]) -> str:
    return "examples:\n" + "\n".join("  " + e for e in examples) if examples else ""


def _description(mod: Any) -> str:
    text = getattr(mod, "DESCRIPTION", None) or mod.HELP
    if "\n" not in text.strip():   # one paragraph: wrap it; a pre-formatted description stays as it is
        text = textwrap.fill(text, 100)
    parts = [_examples_block(list(getattr(mod, "EXAMPLES", []) or [])), text]
    return "\n\n".join(p for p in parts if p)


def _order_groups(p: argparse.ArgumentParser) -> None:
    """Show the option groups in the same order in every command (input ... output, limits)."""
    from .commands._common import GROUP_ORDER

    rank = {t: i for i, t in enumerate(GROUP_ORDER)}
    first = [g for g in p._action_groups if g.title not in rank and g.title in ("positional arguments", "options")]
    rest = [g for g in p._action_groups if g not in first]
    rest.sort(key=lambda g: rank.get(g.title, rank["output"] - 0.5))   # stable: other groups before output
    p._action_groups[:] = first + rest


def add_face_args(p: argparse.ArgumentParser) -> bool:
    """``--progress`` and ``--json`` in the command's output group; returns True when the command already
    had its own ``--json`` (then it prints its object itself)."""
    from .commands._common import OUTPUT, group

    g = group(p, OUTPUT)
    g.add_argument("--progress", choices=PROGRESS_MODES, default=argparse.SUPPRESS,
                   help="progress face: auto (default; a bar on stderr at a terminal, JSON lines on stdout "
                        "when it is piped), bar, json (the versioned protocol) or none; default $%s"
                        % PROGRESS_ENV)
    own_json = "--json" in p._option_string_actions
    if not own_json:
        g.add_argument("--json", action="store_true", default=False,
                       help="print the final result object alone on stdout (for scripts: ... --json | jq)")
    return own_json


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kneepipeline", formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        _examples_block(EXAMPLES) + "\n\nQuantitative knee MRI: segmentation, meshes, cartilage thickness, T2, "
        "shape model, B-score.\nAt a terminal: a progress bar and a summary on stderr. Piped: JSON-lines events "
        "on stdout (docs/CLI.md).\nEvery command: COMMAND --help starts with examples."))
    parser.add_argument("--version", action="version", version="kneepipeline " + __version__)
    parser.add_argument("--progress", choices=PROGRESS_MODES, default=None,
                        help="progress face (also after the command): auto, bar, json or none")
    parser.add_argument("--quiet-progress", action="store_true", help=argparse.SUPPRESS)  # = --progress none
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _command_modules().items():
        usage = getattr(mod, "USAGE", None)
        p = sub.add_parser(name, help=mod.HELP, description=_description(mod),
                           usage=("%(prog)s " + usage) if usage else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        own_json = add_face_args(p)
        _order_groups(p)
        p.set_defaults(_module=mod, _own_json=own_json)
    return parser


def _prescan(argv: List[str]) -> Dict[str, Any]:
    """What the face options say, read before argparse (so an argument error reaches the right face)."""
    seen: Dict[str, Any] = {"progress": None, "json": False}
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == "--progress" and i + 1 < len(argv):
            seen["progress"] = argv[i + 1]
        elif a.startswith("--progress="):
            seen["progress"] = a.split("=", 1)[1]
        elif a == "--quiet-progress" and not seen["progress"]:
            seen["progress"] = "none"
        elif a == "--json":
            seen["json"] = True
    if seen["progress"] not in PROGRESS_MODES:
        seen["progress"] = None
    return seen


def _face(mode: Optional[str], result_only: bool) -> Face:
    try:
        return choose_face(mode, result_only=result_only)
    except KneePipelineError:   # a bad $KNEEPIPELINE_PROGRESS: reported by the caller, shown plainly
        return choose_face("auto", environ={}, result_only=result_only)


def _report_error(err: KneePipelineError, progress: Progress) -> int:
    progress.error(err)
    progress.close()
    sys.stderr.write("ERROR [%s]: %s\nHint: %s\n" % (err.category, err.message, err.hint))
    sys.stderr.flush()
    if progress.face.result_only:   # --json: the final object of a failed command is its error
        _print_object({"status": "failed", "error": err.to_dict()})
    return err.exit_code


def _print_object(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def _usage_error(message: str, hint: str) -> KneePipelineError:
    from .errors import UsageError

    return UsageError(message, hint=hint)


def main(argv: Optional[List[str]] = None) -> int:
    from .devices import enable_mps_fallback

    enable_mps_fallback()   # before any command imports torch: Apple GPUs run ops MPS lacks on the CPU
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageProblem as exc:
        pre = _prescan(argv)
        progress = Progress(face=_face(pre["progress"], pre["json"]))
        return _report_error(_usage_error("%s: %s" % (exc.prog, exc.message),
                                          "See `%s --help` (it starts with examples)." % exc.prog), progress)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=_CurrentStderr(),
                        format="%(levelname)s %(name)s: %(message)s")
    mode = getattr(args, "progress", None) or ("none" if args.quiet_progress else None)
    result_only = bool(getattr(args, "json", False))
    try:
        face = choose_face(mode, result_only=result_only)
    except KneePipelineError as exc:   # only a bad $KNEEPIPELINE_PROGRESS gets here
        return _report_error(_usage_error(exc.message, exc.hint), Progress(face=_face(None, result_only)))
    if not getattr(args, "_module", None):
        parser.print_help(sys.stderr)
        return USAGE_EXIT_CODE
    progress = Progress(face=face)
    try:
        rc = int(args._module.main(args, progress) or 0)
    except BaseException as exc:  # noqa: BLE001 - the one place errors are classified
        if isinstance(exc, SystemExit):
            progress.close()
            raise
        err = classify(exc)
        if not isinstance(exc, KneePipelineError):
            logging.getLogger("kneepipeline").exception("unexpected error")
        return _report_error(err, progress)
    progress.close()
    if result_only and not args._own_json:
        _print_object(progress.outcome if progress.outcome is not None else
                      {"status": "complete" if rc == 0 else "failed"})
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
