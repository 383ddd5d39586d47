#!/usr/bin/env python
"""Thin wrapper: `python tools/export_hf.py CKPT OUT_DIR [options]` = `llada-ds export ...`."""

import sys

from llada_ds.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
