"""The plain single-process loop: a tiny model overfits one batch (`llada-ds overfit`)."""

import pytest

from llada_ds.model import get_preset
from llada_ds.train.plain import overfit_one_batch


@pytest.mark.timeout(900)  # 200 steps of the 5M-parameter model: a minute alone, much more on a busy machine
def test_tiny_model_overfits_one_batch_on_cpu():
    result = overfit_one_batch(get_preset("tiny"), steps=200, batch_size=2, seq_len=32, lr=5e-4, seed=0)
    # Loss on fixed noise draws starts near ln(vocab) ~ 8.3 and must fall well below it.
    assert result.eval_before > 7.0
    assert result.eval_after < 0.25 * result.eval_before
