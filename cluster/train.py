#!/usr/bin/env python
"""`ray job submit ... -- python cluster/train.py --recipe R --workers MIN[:MAX] [...]`.

Thin: the job's logic is llada_ds/train/ray_job.py (see its docstring and the README's cluster
guide). With `--working-dir .` the repository travels with the job; llada_ds is imported from it
when the cluster's image does not have it installed.
"""

import sys
from pathlib import Path

try:
    import llada_ds  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llada_ds.train.ray_job import main

if __name__ == "__main__":
    sys.exit(main())
