"""The cohort: a CSV (one knee per row) -> one :class:`KneeJob` per knee -> a plan (run, skip or hold).

Resume rules: a knee whose manifest is complete, whose outputs exist and whose computation options match is
skipped. By default every other knee runs (never run, failed, cancelled, interrupted, or stale because the
options changed). ``retry_failed=True`` runs only knees whose last run failed, was cancelled or was
interrupted; knees never run or stale are held.
"""
from __future__ import annotations

import csv
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigurationError, KneePipelineError
from ..manifest import MANIFEST_NAME, load_manifest
from ..options import RunOptions

KNEES_DIR = "knees"
VISIT_COLUMN = "visit"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# RunOptions fields a cohort row may not set: the batch owns them.
RESERVED_COLUMNS = ("out_dir", "resume")
PATH_FIELDS = ("image", "labels", "model_dir", "nsm_dir", "bscore_dir")
LIST_PATH_FIELDS = ("echoes",)
KNOWN_CONVENTIONS = ("dosma", "nnunet", "pymskt")
# knee states found on disk
MISSING, COMPLETE, STALE, FAILED, CANCELLED, INTERRUPTED = (
    "missing", "complete", "stale", "failed", "cancelled", "interrupted")
RETRYABLE = (FAILED, CANCELLED, INTERRUPTED)


@dataclass
class KneeJob:
    knee_id: str              # unique key and folder name: the id, or "<id>__<visit>" with a visit column
    options: RunOptions       # out_dir = DIR/knees/<knee_id>, absolute paths
    line: int                 # line number in the cohort CSV (header = 1)
    subject: str = ""         # the row's id (the same knee at every visit)
    visit: Optional[str] = None   # the row's visit, when the cohort has a 'visit' column


def _field_types() -> Dict[str, Any]:
    return typing.get_type_hints(RunOptions)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_scalar(text: str, tp: Any, column: str) -> Any:
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "y", "on"):
            return True
        if low in ("0", "false", "no", "n", "off"):
            return False
        raise ValueError("%s: %r is not a yes/no value (true/false, yes/no, 1/0)" % (column, text))
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("%s: %r is not an integer" % (column, text)) from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("%s: %r is not a number" % (column, text)) from None
    return text


def parse_cell(text: str, column: str, types: Optional[Dict[str, Any]] = None) -> Any:
    """One cohort cell into the RunOptions field's type; lists are ';'-separated."""
    tp = _unwrap_optional((types or _field_types())[column])
    if typing.get_origin(tp) in (list, List):
        (item,) = typing.get_args(tp) or (str,)
        parts = [p.strip() for p in text.split(";") if p.strip()]
        return [_parse_scalar(p, item, column) for p in parts]
    return _parse_scalar(text, tp, column)


def _resolve(path: str, base_dir: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _absolute_paths(values: Dict[str, Any], base_dir: Path) -> Dict[str, Any]:
    """Make the path-valued options absolute (relative ones are taken from ``base_dir``)."""
    out = dict(values)
    for name in PATH_FIELDS:
        if out.get(name):
            out[name] = _resolve(str(out[name]), base_dir)
    for name in LIST_PATH_FIELDS:
        if out.get(name):
            out[name] = [_resolve(str(v), base_dir) for v in out[name]]
    conv = out.get("label_convention")
    if conv and conv not in KNOWN_CONVENTIONS:
        out["label_convention"] = _resolve(str(conv), base_dir)
    return out


def knee_dir(out_dir: str | os.PathLike, knee_id: str) -> Path:
    return Path(out_dir) / KNEES_DIR / knee_id


def read_cohort(csv_path: str | os.PathLike, base: RunOptions, out_dir: str | os.PathLike) -> List[KneeJob]:
    """Read and validate a cohort CSV; every problem found is reported at once (ConfigurationError).

    Columns: ``id`` (required, unique, a safe folder name), optionally ``visit`` (then ``id`` names the knee
    and each (id, visit) pair is unique; the first visit of an id in file order is its baseline, see
    :mod:`.longitudinal`), ``image`` and/or ``labels``, and any
    RunOptions field (``label_convention``, ``echoes`` (';'-separated), ``echo_times_ms``, ``nsm`` ...)
    overriding ``base`` for that row. Empty cells keep ``base``'s value. Relative paths are taken from
    the CSV's folder. Missing input *files* are not checked here: the knee's run reports them.
    """
    csv_path = Path(csv_path)
    out_dir = Path(out_dir).resolve()
    try:
        with open(csv_path, "r", encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise ConfigurationError("The cohort file %s does not exist." % csv_path,
                                 hint="Pass the path of a CSV with one knee per row.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigurationError("Cannot read the cohort file %s: %s." % (csv_path, exc),
                                 hint="Save the cohort as a UTF-8 CSV file.") from exc
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ConfigurationError("The cohort file %s is empty." % csv_path,
                                 hint="The first line names the columns: id,image or id,labels,label_convention ...")
    header = [h.strip().lower().replace("-", "_").replace(" ", "_") for h in rows[0]]
    types = _field_types()
    allowed = [n for n in types if n not in RESERVED_COLUMNS]
    if "id" not in header:
        raise ConfigurationError("The cohort file %s has no 'id' column." % csv_path,
                                 hint="Add a column 'id' with a unique folder-safe name per knee.")
    dupes = sorted({h for h in header if header.count(h) > 1 and h})
    unknown = [h for h in header if h not in ("id", VISIT_COLUMN) and h not in allowed]
    if dupes or unknown:
        parts = []
        if unknown:
            parts.append("unknown column(s): %s" % ", ".join(repr(u) for u in unknown))
        if dupes:
            parts.append("repeated column(s): %s" % ", ".join(dupes))
        raise ConfigurationError("The cohort file %s has %s." % (csv_path, "; ".join(parts)),
                                 hint="Columns are 'id' and run option names: %s (the batch sets out_dir "
                                      "and resume itself)." % ", ".join(allowed))
    base_dir = csv_path.resolve().parent
    base_values = _absolute_paths(base.to_dict(), Path.cwd())
    problems: List[str] = []
    jobs: List[KneeJob] = []
    seen: Dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) > len(header):
            problems.append("line %d: %d cells but %d columns" % (lineno, len(row), len(header)))
            continue
        cells = {h: c.strip() for h, c in zip(header, row)}
        kid = cells.get("id", "")
        if not ID_RE.match(kid) or kid in (".", ".."):
            problems.append("line %d: id %r is not a safe folder name (letters, digits, '.', '_', '-'; "
                            "starts with a letter or digit; at most 100 characters)" % (lineno, kid))
            continue
        visit = cells.get(VISIT_COLUMN) or None
        if VISIT_COLUMN in header and (not visit or not ID_RE.match(visit) or "__" in visit):
            problems.append("line %d: visit %r is not a safe folder name (letters, digits, '.', '_', '-'; no '__')"
                            % (lineno, visit or ""))
            continue
        key = kid if visit is None else "%s__%s" % (kid, visit)
        if key.lower() in seen:
            problems.append("line %d: %s repeats line %d (%s)" % (
                lineno, ("id %r" % kid) if visit is None else ("id %r, visit %r" % (kid, visit)), seen[key.lower()],
                "ids must be unique, ignoring case" if visit is None else "each knee's visits must be unique"))
            continue
        seen[key.lower()] = lineno
        values = dict(base_values)
        row_values: Dict[str, Any] = {}
        try:
            for h, text in cells.items():
                if h in ("id", VISIT_COLUMN) or text == "":
                    continue
                row_values[h] = parse_cell(text, h, types)
        except ValueError as exc:
            problems.append("line %d: %s" % (lineno, exc))
            continue
        values.update(_absolute_paths(row_values, base_dir))
        values["out_dir"] = str(knee_dir(out_dir, key))
        values["resume"] = False
        opts = RunOptions(**values)
        try:
            opts.validate()
        except KneePipelineError as exc:
            problems.append("line %d (%s): %s" % (lineno, key, exc.message))
            continue
        jobs.append(KneeJob(key, opts, lineno, subject=kid, visit=visit))
    if problems:
        shown = problems[:20] + (["... and %d more" % (len(problems) - 20)] if len(problems) > 20 else [])
        raise ConfigurationError("The cohort file %s has %d problem(s):\n  %s" % (csv_path, len(problems), "\n  ".join(shown)),
                                 hint="Fix these rows; nothing was run.")
    if not jobs:
        raise ConfigurationError("The cohort file %s lists no knees." % csv_path, hint="Add one row per knee.")
    return jobs


# ----------------------------------------------------------------------------------------------
# planning (resume)
# ----------------------------------------------------------------------------------------------
def knee_state(job: KneeJob) -> str:
    """What the knee's folder holds: missing, complete (and matching), stale, failed, cancelled, interrupted."""
    from ..pipeline import complete_and_matching

    out = Path(job.options.out_dir)
    if not (out / MANIFEST_NAME).is_file():
        return MISSING
    try:
        m = load_manifest(str(out))
    except (OSError, ValueError, TypeError):
        return INTERRUPTED
    if m.status == "complete":
        return COMPLETE if complete_and_matching(out, job.options) else STALE
    if m.status in (FAILED, CANCELLED):
        return m.status
    return INTERRUPTED   # "running" left behind by a killed batch


@dataclass
class PlannedKnee:
    job: KneeJob
    state: str        # knee_state before this invocation
    action: str       # "run" | "skip" (complete) | "hold" (not run: --retry-failed and not a failure)


def plan_cohort(jobs: Sequence[KneeJob], retry_failed: bool = False) -> List[PlannedKnee]:
    plans = []
    for job in jobs:
        st = knee_state(job)
        if st == COMPLETE:
            action = "skip"
        elif retry_failed:
            action = "run" if st in RETRYABLE else "hold"
        else:
            action = "run"
        plans.append(PlannedKnee(job, st, action))
    return plans


def needs_gpu(opts: RunOptions) -> bool:
    """Does this knee run a model (segmentation or shape model) on a GPU if one is offered?"""
    if opts.device == "cpu":
        return False
    segmentation = bool(opts.image) and not opts.labels
    return segmentation or opts.nsm != "none"
