"""`python -m KneePipelineLib`: the same entry point as the `kneepipeline` command (cli.main)."""
import sys

from .cli import main

sys.exit(main())
