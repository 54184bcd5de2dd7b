"""``kneepipeline`` / ``python -m KneePipelineLib``: one entry point, subcommands in ``commands/``.

Each module in :mod:`KneePipelineLib.commands` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``main(args, progress) -> int``. Errors are caught here once: a typed error event on stdout, the
message and hint on stderr, and the category's exit code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import List, Optional

from . import __version__
from .errors import KneePipelineError, classify
from .progress import Progress

COMMAND_ORDER = ["run", "segment", "analyze", "t2", "nsm", "batch", "report", "models", "doctor",
                 "sample-data", "demo"]


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


def build_parser():
    parser = argparse.ArgumentParser(prog="kneepipeline", description=(
        "Quantitative knee MRI: segmentation, meshes, cartilage thickness, T2, shape model, B-score. "
        "Progress is printed as JSON lines on stdout; human-readable logs go to stderr."))
    parser.add_argument("--version", action="version", version="kneepipeline " + __version__)
    parser.add_argument("--quiet-progress", action="store_true", help="do not print JSON progress events")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = _command_modules()
    for name, mod in mods.items():
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_module", None):
        parser.print_help(sys.stderr)
        return 2
    progress = Progress(enabled=not args.quiet_progress)
    try:
        return int(args._module.main(args, progress) or 0)
    except BaseException as exc:  # noqa: BLE001 - the one place errors are classified
        if isinstance(exc, SystemExit):
            raise
        err = classify(exc)
        if not isinstance(exc, KneePipelineError):
            logging.getLogger("kneepipeline").exception("unexpected error")
        progress.error(err)
        sys.stderr.write("ERROR [%s]: %s\nHint: %s\n" % (err.category, err.message, err.hint))
        return err.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
