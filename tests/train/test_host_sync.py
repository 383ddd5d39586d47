"""Device-to-host copies in a training step, counted by a spy (tests/host_sync.py) on a real ZeRO-3
step, and the step's figures against the plain loop's."""

import json
import subprocess
import sys

import pytest

from helpers import ENV, REPO


@pytest.mark.timeout(300)
def test_a_step_reads_the_device_twice_at_its_boundaries_and_its_figures_are_the_plain_loops(recipe, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "host_sync_check.py"), str(recipe),
                          str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for step in out["steps"]:  # 4 micro-batches each
        # Ours: the data-read check at the start of the step (one flag, shared by all ranks) and
        # the one copy of the step's figures and gradient norm after the update. Nothing per
        # micro-batch: no token check, boolean mask, nonzero or bincount on device data, in the
        # forward, the loss or the backward.
        assert step["llada_ds"] == 2, step["where"]
        assert step["functions"] == ["_outcome", "all_reduce_sum"], step["where"]
        assert not any("backward" in site for site in step["where"].get("deepspeed", {})), step["where"]
    for got, ref in zip(out["trainer"], out["plain"], strict=True):
        for key in ("masked", "tokens", "padding", "bucket_count", "correct"):
            assert got[key] == ref[key], key
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert got["bucket_loss"] == pytest.approx(ref["bucket_loss"], rel=1e-5)
