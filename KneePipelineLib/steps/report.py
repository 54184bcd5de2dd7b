"""Step report (non-fatal): QC pictures and report.html; step bundle: the zip of every output."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..manifest import MANIFEST_NAME
from .context import BUNDLE_NAME, RunContext


def step_report(ctx: RunContext) -> None:
    from ..report import build_report

    build_report(ctx.out_dir, ctx.manifest, progress=ctx.progress.sub("report"))


def step_bundle(ctx: RunContext) -> None:
    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for entry in sorted(ctx.manifest.outputs, key=lambda e: e.path):
                if entry.path == BUNDLE_NAME:
                    continue
                zf.write(ctx.out_dir / entry.path, arcname=entry.path)
            zf.writestr(MANIFEST_NAME, json.dumps(ctx.manifest.to_dict(), indent=2, allow_nan=False))

    ctx.output(BUNDLE_NAME, "archive", write_zip, step="bundle", description="Zip of the run's outputs")
