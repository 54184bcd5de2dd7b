"""`kneepipeline models`: the model registry with each model's local state; downloads on request."""
from __future__ import annotations

import json
import sys

NAME = "models"
HELP = "list the models (downloaded? verified? where?) and download them"
USAGE = "[--download ID [ID ...]] [--check DIR] [--json] [options]"
EXAMPLES = [
    "kneepipeline models",
    "kneepipeline models --download nnunet_fullres",
    "kneepipeline models --check ~/models/Dataset500_KneeMRI --model nnunet_fullres",
    "kneepipeline models --json | jq -r '.[] | select(.downloaded) | .id'",
]


def add_arguments(p):
    from ._common import OUTPUT, group

    g = group(p, "actions")
    g.add_argument("--download", metavar="ID", nargs="+",
                   help="download these models into the cache (all: every model with a download source)")
    group(p, OUTPUT).add_argument("--json", action="store_true", help="print the list as JSON on stdout")
    g = group(p, "where the models are")
    g.add_argument("--model-dir", help="check / use this local model folder instead of the cache")
    g.add_argument("--cache-dir", help="model cache (default $KNEEPIPELINE_CACHE or ~/.cache/kneepipeline/hub)")
    g.add_argument("--folds", type=int, nargs="+", help="nnU-Net folds to fetch (default: the published ones)")
    g.add_argument("--checkpoint", choices=("best", "final"), default="best")
    g.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub or the Git host")
    group(p, "actions").add_argument("--check", metavar="DIR", help="check that a model folder you already have is a registry model "
                   "(nnU-Net: plans transpose/spacing, labels, fold and checkpoint; 2D nets: the .h5 input size "
                   "and classes) before any prediction; exits non-zero with the problem when it is not")
    group(p, "actions").add_argument("--model", metavar="ID", help="with --check: the registry model DIR must be (default: any)")


def _row(entry, args) -> dict:
    from ..hub import default_cache_dir, model_state

    state = None
    if entry.kind == "bscore" and not args.model_dir:  # where the pipeline looks first: folders on disk
        from ..hub import provenance
        from ..shape.bscore import find_bscore_folder

        found = find_bscore_folder(entry.id)
        if found is not None:
            prov = provenance(entry, found, cache_dir=args.cache_dir)
            state = {"downloaded": True, "verified": prov["verified"], "path": str(found), "revision": None,
                     "pinned_revision": prov["pinned_revision"], "cached_revisions": []}
    if state is None:
        state = model_state(entry, cache_dir=args.cache_dir, model_dir=args.model_dir, folds=args.folds,
                            checkpoint=args.checkpoint)
    src = entry.source
    return {"id": entry.id, "name": entry.display_name, "kind": entry.kind, "backend": entry.backend,
            "repo_id": src.repo_id if src else None, "source_kind": src.kind if src else None,
            "requested_revision": src.revision if src else None,
            "gated": entry.gated, "size_bytes": src.size_bytes if src else None, "default": entry.default,
            "cache_dir": str(args.cache_dir or default_cache_dir()), **state}


def _revision_text(r: dict) -> str:
    """The cached commit (short); a pinned one that is not cached shows what is cached instead."""
    if r["revision"]:
        return r["revision"][:10]
    if r["cached_revisions"]:
        return "%s!=pin" % r["cached_revisions"][-1][:6]
    if r["downloaded"]:
        return "local"
    return "-"


def _check_entry(entry, folder, args) -> dict:
    """One registry model against a user's folder: {"id", "ok", "problem" | "details"}."""
    import pathlib

    from ..errors import KneePipelineError

    try:
        if entry.backend in ("nnunet", "nnunet_cascade"):
            from ..hub import _candidate_roots
            from ..segmentation.settings import check_model, folder_name

            confs = entry.config.get("configurations", [])
            roots = [r for r in _candidate_roots(entry, pathlib.Path(folder))
                     if all((r / folder_name(entry, c)).is_dir() for c in confs)]
            if not roots:
                return {"id": entry.id, "ok": False, "problem": "no %s folder in %s" % (
                    " + ".join(folder_name(entry, c) for c in confs), folder)}
            details = check_model(entry, roots[0], args.folds, args.checkpoint)
            return {"id": entry.id, "ok": True, "path": str(roots[0]), "details": details}
        if entry.backend == "keras_unet":
            from ..segmentation.dosma import model_file
            from ..segmentation.keras_h5 import check_keras_file

            name = (entry.config or {}).get("file", "*.h5")
            if not (pathlib.Path(folder) / name).is_file():
                return {"id": entry.id, "ok": False, "problem": "no %s in %s" % (name, folder)}
            path = model_file(entry, pathlib.Path(folder))
            return {"id": entry.id, "ok": True, "path": str(path), "details": check_keras_file(path, entry)}
    except KneePipelineError as exc:
        return {"id": entry.id, "ok": False, "problem": exc.message if hasattr(exc, "message") else str(exc),
                "hint": getattr(exc, "hint", None)}
    return {"id": entry.id, "ok": False, "problem": "backend %s has no folder check" % entry.backend}


def check(args, progress) -> int:
    """``models --check DIR``: which registry model the folder holds, or why it holds none."""
    import pathlib

    from ..errors import ModelInvalidError, ModelMissingError
    from ..registry import get_model, list_models

    folder = pathlib.Path(args.check).expanduser()
    if not folder.is_dir():
        raise ModelMissingError("%s is not a folder." % folder, hint="Give the folder that holds the model files.")
    entries = [get_model(args.model)] if args.model else [m for m in list_models("segmentation")
                                                          if m.backend in ("nnunet", "nnunet_cascade", "keras_unet")]
    rows = [_check_entry(e, folder, args) for e in entries]
    for r in rows:
        sys.stderr.write("%-18s %s\n" % (r["id"], "OK  %s" % r["path"] if r["ok"] else "--  " + r["problem"]))
    ok = [r for r in rows if r["ok"]]
    if not ok:
        # the most specific problem: one about a folder that exists, not "no such folder"
        named = [r for r in rows if not r["problem"].startswith("no ")] or rows
        first = named[0]
        raise ModelInvalidError("%s is not a usable %s: %s" % (folder, first["id"] if args.model or len(named) == 1
                                                               else "registry model", first["problem"]),
                                hint=first.get("hint") or "kneepipeline models lists the registry models and "
                                                          "their expected files.")
    progress.result(check=rows)
    return 0


def main(args, progress) -> int:
    from ..hub import ensure_model
    from ..registry import get_model, list_models

    if args.check:
        return check(args, progress)
    if args.download:
        ids = [m.id for m in list_models() if m.source is not None] if args.download == ["all"] else args.download
        entries = [get_model(i) for i in ids]
        progress.set_steps([("download " + e.id, float((e.source.size_bytes if e.source else 0) or 1))
                            for e in entries])
        for e in entries:
            path = ensure_model(e, model_dir=None, offline=args.offline, progress=progress.sub("download " + e.id),
                                cache_dir=args.cache_dir, folds=args.folds, checkpoint=args.checkpoint)
            sys.stderr.write("%s: %s\n" % (e.id, path))
    rows = [_row(m, args) for m in list_models()]
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        out = sys.stderr if not args.download else sys.stderr
        out.write("%-22s %-13s %-15s %-10s %-8s %-12s %s\n" % ("ID", "KIND", "BACKEND", "STATE", "VERIFIED",
                                                               "REVISION", "PATH / SOURCE"))
        for r in rows:
            state = "present" if r["downloaded"] else ("gated" if r["gated"] else "absent")
            ver = {True: "yes", False: "NO", None: "-"}[r["verified"]]
            where = r["path"] or (("%s@%s" % (r["repo_id"], r["requested_revision"][:12])) if r["repo_id"]
                                  else "(no download source)")
            out.write("%-22s %-13s %-15s %-10s %-8s %-12s %s%s\n" % (
                r["id"] + ("*" if r["default"] else ""), r["kind"], r["backend"], state, ver, _revision_text(r),
                where, "" if r["path"] else (" (gated: needs a token)" if r["gated"] else "")))
            if r["cached_revisions"] and not r["downloaded"]:
                out.write("    cached at revision %s, but the registry pins %s: download the pinned one\n"
                          % (", ".join(c[:12] for c in r["cached_revisions"]), r["pinned_revision"][:12]))
        out.write("* default segmentation model. Download: kneepipeline models --download ID\n")
    if args.download:
        progress.result(models=[r for r in rows if r["id"] in set(args.download) or args.download == ["all"]])
    return 0
