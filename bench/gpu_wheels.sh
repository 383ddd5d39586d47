#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before the GPU run: puts into .whl/ the wheels the lent GPU
# machine lacks (it has torch 2.11 + CUDA, transformers, numpy, pyyaml, psutil, ninja, msgpack,
# py-cpuinfo; no deepspeed, no pydantic, no hjson, and no internet). Python there is 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0
# deepspeed is published as an sdist only; its wheel is pure Python.
ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1 || python3 -m pip wheel -q --no-deps deepspeed==0.19.8 -w .whl
ls -la .whl
