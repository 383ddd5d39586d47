"""A non-editable install finds everything it ships: recipes, DeepSpeed configs, the remote code.

The package is built and installed by pip (`pip install --no-deps --target DIR .`, a real
non-editable install of this checkout, its dependencies taken from the test environment) and run
from a directory outside the repository, so nothing can be found through the source tree.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from helpers import ENV, REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(REPO)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return site


@pytest.mark.timeout(600)
def test_the_installed_package_trains_the_tiny_recipe_without_a_deepspeed_config(installed, recipe, tmp_path):
    env = {**ENV, "PYTHONPATH": str(installed)}
    where = subprocess.run([sys.executable, "-c", "import json, llada_ds, llada_ds.train.engine as e, llada_ds.config "
                            "as c; print(json.dumps([llada_ds.__file__, e.default_ds_config(), str(c.recipe_path('tiny'))]))"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    package, ds_config, tiny = json.loads(where.stdout.strip().splitlines()[-1])
    for path in (package, ds_config, tiny):
        assert path.startswith(str(installed)) and not path.startswith(str(REPO)), path
    data = yaml.safe_load(recipe.read_text())["data"]  # the tiny recipe's model on the test's shards
    overrides = [f"--data.train={data['train']}", f"--data.validation={data['validation']}",
                 f"--data.tokenizer={data['tokenizer']}", "--train.steps=2", "--train.global_batch=4",
                 "--train.micro_batch=2", "--data.seq_len=64", "--eval.samples=4", "--log.every=1"]
    # The one entry point every launcher runs, as one process...
    one = subprocess.run([sys.executable, "-m", "llada_ds.train", "--recipe", "tiny", "--run-dir", str(tmp_path / "one"),
                          *overrides], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert "done: 2 steps" in one.stdout
    # ...and through `llada-ds train`, which starts it under torchrun.
    two = subprocess.run([sys.executable, "-m", "llada_ds.cli", "train", "--nproc", "2", "--recipe", "tiny",
                          "--run-dir", str(tmp_path / "two"), *overrides],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "done: 2 steps" in two.stdout and (tmp_path / "two" / "checkpoints" / "latest").is_file()
