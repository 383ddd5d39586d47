"""The GPU suite (bench/gpu_suite.sh -> bench/gpu_suite.py) runs end to end in its CPU-sized
configuration (--tiny), offline wheel installation included, so a run on a GPU machine does not
fail on something a CPU could have caught."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE_SH = REPO / "bench" / "gpu_suite.sh"


def _wheel(directory: Path, name: str = "gpusuite_probe") -> Path:
    """A minimal pure-Python wheel, written by hand (no build tools, no network)."""
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{name}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{name}-0.1.dist-info/RECORD"] = ("\n".join(record + [f"{name}-0.1.dist-info/RECORD,,"]) + "\n").encode()
    path = directory / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arc, data in files.items():
            zf.writestr(arc, data)
    return path


@pytest.mark.timeout(300)
def test_gpu_suite_runs_tiny_on_cpu(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DS_ACCELERATOR": "cpu", "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path)}
    res = subprocess.run(["bash", str(SUITE_SH), "--tiny", "--wheels", str(wheels), "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=280)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # The wheels went into a temporary directory that is gone after the run.
    assert "installing 1 wheels" in res.stdout
    assert not list(tmp_path.glob("llada-ds-gpu-suite.*"))
    results = json.loads((out / "gpu_results.json").read_text())
    checked = [r for r in results["attention_correctness"] if "rel_err_vs_eager" in r]
    assert checked and all(r["ok"] for r in checked)
    assert {r["backend"] for r in checked} >= {"sdpa[math]", "sdpa[auto]"}
    assert any(r["doc_mask"] for r in checked) and any(r["kv_heads"] < 4 for r in checked)
    for ckpt in (False, True):
        step = results[f"train_step_ckpt_{ckpt}"]
        assert "error" not in step, step
        assert step["tokens_per_s"] > 0 and step["loss"] == step["loss"]
    assert "train step" in (out / "gpu_results.txt").read_text()
    assert "train step" in (out / "gpu_suite.log").read_text()
    assert results["samplers"]["exact"]["tokens_per_s"] > 0 and "agreement" in results["samplers"]["dual_cache"]


def test_gpu_suite_script_options(tmp_path):
    assert subprocess.run(["bash", "-n", str(SUITE_SH)]).returncode == 0
    res = subprocess.run(["bash", str(SUITE_SH), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--wheels DIR" in res.stdout and "--out DIR" in res.stdout
    res = subprocess.run(["bash", str(SUITE_SH), "--wheels", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "no .whl files" in res.stderr
