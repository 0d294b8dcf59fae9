#!/usr/bin/env python
"""Run a sweep config: ``python experiments/run.py experiments/configs/cpu-check.yaml``.

Same as ``interp sweep CONFIG``: finished cells are skipped, so an interrupted run resumes;
writes ``results.csv``, ``shift.csv`` and ``figures.html`` under the output directory.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from interp.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    quiet = ["--quiet"] if "--quiet" in args else []
    sys.exit(main([*quiet, "sweep", *[a for a in args if a != "--quiet"]]))
