#!/usr/bin/env python
"""`python tools/elastic_resume.py CKPT [--out DIR]`: a ZeRO-3 checkpoint -> DeepSpeed's universal form.

Training converts by itself when it resumes on another number of ranks (Ray elastic restarts,
or a torchrun/deepspeed job relaunched on other nodes); this does the same by hand.
"""

import sys

from llada_ds.train.elastic import main

if __name__ == "__main__":
    sys.exit(main())
