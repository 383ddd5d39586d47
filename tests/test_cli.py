import os
import subprocess
import sys

import pytest

from llada_ds.cli import main


def run_cli(*args):
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return subprocess.run([sys.executable, "-m", "llada_ds.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_info_prints_the_exact_8b_count_flops_and_zero3_memory():
    res = run_cli("info", "--preset", "llada-8b", "--gpus", "16")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "8,015,581,184" in out
    flops = 6 * (8_015_581_184 - 126464 * 4096) + 12 * 32 * 4096 * 4096
    assert f"{flops:.4g}" in out
    # DeepSpeed's estimator, no offload, 16 GPUs on 2 nodes: largest layer 4*V*d + 18*N/16 bytes.
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, _ = estimate_zero3_model_states_mem_needs(8_015_581_184, 126464 * 4096, 8, 2, False, False, True)
    assert f"{gpu / 1024**3:8.2f} GiB per GPU" in out
    assert "on 16 GPU(s), 8 per node" in out


def test_bad_arguments_give_clear_errors(capsys):
    assert main(["info", "--preset", "tiny", "--gpus", "0"]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert main(["info", "--preset", "tiny", "--gpus", "12"]) == 2  # DeepSpeed's estimator needs full nodes
    assert "12 GPUs do not fill nodes of 8" in capsys.readouterr().err
    assert main(["info", "--preset", "tiny", "--gpus", "12", "--gpus-per-node", "4"]) == 0
    with pytest.raises(SystemExit):
        main(["info", "--preset", "llada-70b"])
    assert "invalid choice" in capsys.readouterr().err
