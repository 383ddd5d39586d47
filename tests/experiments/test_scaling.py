"""The diffusion-vs-autoregressive sweep (experiments/scaling.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.common import training_flops
from experiments.scaling import N_CHOICES, choose, main, make_cloze, mc_subset_nll, model_config
from llada_ds.data.batch import MicroBatch
from llada_ds.data.build import split_of
from llada_ds.diffusion import AutoregressiveObjective
from llada_ds.model import build_model


def test_sizes_are_read_as_width_x_depth():
    cfg = model_config("160x4", 2048, 128)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.ffn_hidden_size) == (160, 4, 5, 5, 432)
    assert model_config("256x6", 2048, 128).ffn_hidden_size == 688  # the tiny preset's width
    for bad in ("160", "100x2", "64x0", "axb"):
        with pytest.raises(ValueError, match="size"):
            model_config(bad, 2048, 128)


def test_cloze_records_are_held_out_continuations_against_spans_from_elsewhere():
    rng = np.random.default_rng(0)
    eos = 2
    stream = rng.integers(3, 40, size=3000)
    stream[rng.choice(3000, 30, replace=False)] = eos
    starts = np.zeros(40, dtype=bool)
    starts[3:25] = True  # tokens 3..24 begin a word
    context, k, n = 20, 3, 60
    records = make_cloze(stream, context, k, n, starts, eos, seed=1)
    assert len(records) == n and make_cloze(stream, context, k, n, starts, eos, seed=1) == records
    text = stream.tolist()
    answers = []
    for r in records:
        assert len(r.context) == context and len(r.choices) == N_CHOICES
        assert all(len(c) == k and starts[c[0]] and eos not in c for c in r.choices)
        assert len({tuple(c) for c in r.choices}) == N_CHOICES and eos not in r.context
        # The true choice is what follows the context in the stream.
        truth = r.context + r.choices[r.answer]
        assert any(text[p : p + context + k] == truth for p in range(len(text) - context - k + 1))
        answers.append(r.answer)
    assert set(answers) == set(range(N_CHOICES))  # the truth is not always in one place
    with pytest.raises(ValueError, match="held-out text too short"):
        make_cloze(stream[:40], context, k, n, starts, eos, seed=1)


def test_choose_takes_the_first_of_the_highest_scores():
    assert choose([-3.0, -1.0, -2.0, -1.0]) == 1 and choose([0.0]) == 0


def test_the_ar_subset_nll_is_the_ar_validation_loss_of_the_same_windows():
    cfg = model_config("32x2", 50, 24)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    windows = np.random.default_rng(1).integers(4, 50, size=(3, 24))
    ours = mc_subset_nll("autoregressive", model, windows, mask_id=3, mc_num=4, seed=0)
    with torch.no_grad():
        loss, _ = AutoregressiveObjective(3, 50).loss(model, MicroBatch(torch.from_numpy(windows), [0, 1, 2]), 0)
    assert ours == pytest.approx(loss.item(), rel=1e-5)


@pytest.fixture(scope="module")
def documents(shakespeare_texts, tmp_path_factory):
    """16 documents of ~6,000 characters cut from one play; documents 12 and 14 are held out."""
    text = shakespeare_texts[0].read_text()
    out = tmp_path_factory.mktemp("docs")
    for i in range(16):
        (out / f"doc{i:02d}.txt").write_text(text[i * 6000 : (i + 1) * 6000])
    assert [i for i in range(16) if split_of(i, 0.2, 0) == "validation"] == [12, 14]
    return out


SMALL = ["--sizes", "32x1", "64x1", "--steps", "30", "--batch-size", "8", "--seq-len", "32", "--warmup-steps", "3",
         "--vocab-size", "512", "--val-fraction", "0.2", "--val-windows", "32", "--mc-windows", "2", "--mc-num", "4",
         "--cloze", "10", "--cloze-tokens", "2", "--cloze-mc-num", "2"]


@pytest.mark.timeout(600)
def test_small_sweep_prints_one_row_per_size_and_objective(documents, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(SMALL + ["--texts", str(documents), "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    runs = result["runs"]
    assert [(r["size"], r["objective"]) for r in runs] == [
        ("32x1", "diffusion"), ("32x1", "autoregressive"), ("64x1", "diffusion"), ("64x1", "autoregressive")]
    for r in runs:
        cfg = model_config(r["size"], result["vocab_size"], 32)
        assert r["tokens"] == 30 * 8 * 32 and r["flops"] == training_flops(cfg, 32, 30 * 8 * 32)
        # Trained for a few steps: finite, and below a uniform guess over the vocabulary (log 512 nats).
        assert 0 < r["nll"] < np.log(512) and 0 < r["mc_nll"] < 8 and 0 <= r["cloze"] <= 1
        # The table's row (the training log's lines start alike but are shorter).
        row = next(line.split() for line in printed.splitlines()
                   if line.split()[:2] == [r["size"], r["objective"]] and len(line.split()) == 17)
        assert row[5:8] == [f"{r['nll']:.3f}", f"{r['mc_nll']:.3f}", f"{r['cloze']:.3f}"]
        # The validation after a quarter, half and three quarters of the steps (7, 15 and 22 of 30).
        assert sorted(r["nll_curve"]) == ["0.25", "0.5", "0.75"] and all(0 < v < 7 for v in r["nll_curve"].values())
        assert row[8:13] == [f"{r['nll_curve']['0.25']:.3f}", "/", f"{r['nll_curve']['0.5']:.3f}", "/",
                             f"{r['nll_curve']['0.75']:.3f}"]
    assert result["chance"] == 0.25 and result["validation_tokens"] > 0
    # The same flops for both objectives of a size: the compute is matched.
    assert runs[0]["flops"] == runs[1]["flops"] < runs[2]["flops"] == runs[3]["flops"]
