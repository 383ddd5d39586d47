"""The in-context learning experiment (experiments/icl.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.icl import (
    BOS,
    EOS,
    QUERY,
    Episode,
    ICLSettings,
    copy_baseline,
    eval_episodes,
    main,
    make_episode,
    training_batch,
)

# A CI-sized run: contexts of 1-3 pairs over 6 keys and 6 values, a 2-layer d_model-64 model.
SMALL = ["--pairs", "3", "--keys", "6", "--values", "6", "--queries", "2", "--eval-pairs", "1", "3",
         "--eval-sequences", "40", "--steps", "300", "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "20",
         "--d-model", "64", "--n-layers", "2", "--n-heads", "4", "--ffn-hidden-size", "128"]


def test_an_episode_is_a_fresh_mapping_and_questions_about_it():
    s = ICLSettings(pairs=8, keys=10, values=5, queries=3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        e = make_episode(s, rng)
        n = len(e.keys)
        assert 1 <= n <= 8 and len(set(e.keys)) == n and len(e.values) == n and 1 <= len(e.queries) <= 3
        assert all(5 <= k < 15 for k in e.keys) and all(15 <= v < 20 for v in e.values)
        assert all(q in e.keys for q in e.queries)
        row = e.tokens(s.length)
        assert len(row) == s.length == 1 + 16 + 9 + 1
        body = [BOS] + [t for kv in zip(e.keys, e.values) for t in kv]
        body += [t for q in e.queries for t in (QUERY, q, e.values[e.keys.index(q)])]
        assert row == body + [EOS] * (s.length - len(body))
        assert e.prompt() == body[: 1 + 2 * n] + [QUERY, e.queries[0]]
        assert row[len(e.prompt())] == e.answer(e.queries[0])


def test_batches_are_a_function_of_seed_and_step_and_evaluation_is_never_trained_on():
    s = ICLSettings(pairs=4, keys=8, values=8, queries=2, batch_size=16, eval_sequences=30)
    a, b = training_batch(s, 3), training_batch(s, 3)
    assert torch.equal(a.tokens, b.tokens) and a.sample_indices == list(range(48, 64))
    assert not torch.equal(a.tokens, training_batch(s, 4).tokens)
    trained = {tuple(r) for step in range(50) for r in training_batch(s, step).tokens.tolist()}
    fresh = [tuple(e.tokens(s.length)) for e in eval_episodes(s, 4)]
    assert len(set(fresh)) > 25 and not trained & set(fresh)
    assert all(len(e.keys) == 4 and len(e.queries) == 1 for e in eval_episodes(s, 4))


def test_copy_baseline_is_the_share_of_in_context_values_equal_to_the_answer():
    episodes = [Episode((5, 6, 7), (20, 20, 21), (5,)),  # two of three values equal the answer
                Episode((5, 6), (20, 21), (6,)),  # one of two
                Episode((9,), (22,), (9,))]  # one of one
    assert copy_baseline(episodes) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


@pytest.mark.parametrize("flags, message", [
    (["--pairs", "9", "--keys", "8"], "needs as many distinct keys"),
    (["--eval-pairs", "20"], "must lie in 1..--pairs"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--d-model", "100", "--n-heads", "3"], "model size"),
])
def test_impossible_settings_are_refused_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.timeout(600)
def test_small_run_prints_the_measured_accuracy_per_number_of_pairs(tmp_path, capsys, one_thread):
    out = tmp_path / "result.json"
    assert main(SMALL + ["--json", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert result["chance"] == 1 / 6 and set(result["copy"]) == {"1", "3"} and result["copy"]["1"] == 1.0
    for objective in ("diffusion", "autoregressive"):
        acc = result["accuracy"][objective]
        # With one pair in context the answer is the one value there: both models learn that.
        assert acc["1"] >= 0.8, acc
        assert 0 <= acc["3"] <= 1
    for n in ("1", "3"):
        row = next(line.split() for line in printed.splitlines() if line.split()[:1] == [n])
        acc, curve = result["accuracy"], result["curve"]
        assert row[1:5] == [f"{acc['diffusion'][n]:.3f}", f"{acc['autoregressive'][n]:.3f}", f"{result['copy'][n]:.3f}",
                            f"{1 / 6:.3f}"]
        # The same questions after 75, 150 and 225 of the 300 steps.
        for objective, cells in (("diffusion", row[5:10]), ("autoregressive", row[10:15])):
            assert sorted(curve[objective]) == ["0.25", "0.5", "0.75"]
            assert cells == [f"{curve[objective]['0.25'][n]:.2f}", "/", f"{curve[objective]['0.5'][n]:.2f}", "/",
                             f"{curve[objective]['0.75'][n]:.2f}"]
