"""The GPU suite runs end to end in its CPU-sized configuration, so it is ready when a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_gpu_suite_runs_tiny_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu"}
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=280)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    checked = [r for r in results["attention_correctness"] if "rel_err_vs_eager" in r]
    assert checked and all(r["ok"] for r in checked)
    assert {r["backend"] for r in checked} >= {"sdpa[math]", "sdpa[auto]"}
    assert any(r["doc_mask"] for r in checked) and any(r["kv_heads"] < 4 for r in checked)
    for ckpt in (False, True):
        step = results[f"train_step_ckpt_{ckpt}"]
        assert "error" not in step, step
        assert step["tokens_per_s"] > 0 and step["loss"] == step["loss"]
    assert "train step" in (tmp_path / "gpu_results.txt").read_text()
    assert results["samplers"]["exact"]["tokens_per_s"] > 0 and "agreement" in results["samplers"]["dual_cache"]
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_suite.sh")]).returncode == 0
