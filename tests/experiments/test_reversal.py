"""The reversal-curse experiment (experiments/reversal.py)."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.reversal import ReversalSettings, main, make_facts, training_statements

# A CI-sized run: 12 facts, a 2-layer d_model-64 model; both objectives reach 1.0 forward by
# step 700 (measured: diffusion 0.33 at step 300), chance is 1/24.
SMALL = ["--facts", "12", "--vocab-size", "300", "--d-model", "64", "--n-layers", "2", "--n-heads", "4",
         "--n-kv-heads", "2", "--ffn-hidden-size", "128", "--steps", "700", "--batch-size", "32", "--lr", "3e-3",
         "--warmup-steps", "20", "--seed", "0"]


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same figures on every run
    yield
    torch.set_num_threads(threads)


def test_facts_are_seeded_with_distinct_names_and_test_pairs_only_forward():
    s = ReversalSettings(facts=40, both_fraction=0.25)
    facts = make_facts(s)
    assert facts == make_facts(s) and facts != make_facts(ReversalSettings(facts=40, both_fraction=0.25, seed=1))
    names = [n for f in facts for n in (f.child, f.parent)]
    assert len(set(names)) == 80
    assert sum(f.both for f in facts) == 10
    statements = set(training_statements(facts))
    for f in facts:
        assert f.statement("forward") in statements
        assert (f.statement("reverse") in statements) == f.both
        prompt, answer = f.query("reverse")
        assert f.statement("reverse") == f"{prompt} {answer}."


@pytest.mark.parametrize("flags, message", [
    (["--facts", "1"], "--facts must be at least 2"),
    (["--facts", "3", "--both-fraction", "0.1"], "leaves 0 pair"),
    (["--both-fraction", "1"], "strictly between 0 and 1"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--n-heads", "3"], "d_model=128 is not divisible by model.n_heads=3"),
    (["--facts", "4", "--steps", "1"], "--vocab-size 512 with 6 training statements"),
])
def test_impossible_settings_are_refused_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.timeout(200)
def test_small_run_memorises_forward_facts_and_prints_the_measured_table(tmp_path, capsys, one_thread):
    out = tmp_path / "result.json"
    assert main(SMALL + ["--json", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    for objective in ("diffusion", "autoregressive"):
        acc = result["accuracy"][objective]
        # Trained directions are memorised (chance is 1/24): the training and the decoding work.
        assert acc["test_forward"] >= 0.8 and acc["both_forward"] >= 0.8 and acc["both_reverse"] >= 0.8, acc
        assert 0 <= acc["test_reverse"] <= 1
        # The table prints the evaluation's own figures for this objective.
        row = next(line for line in printed.splitlines() if line.startswith(objective + " "))
        assert row.split()[1:3] == [f"{acc['test_forward']:.3f}", f"{acc['test_reverse']:.3f}"]
    assert result["settings"]["model_overrides"]["d_model"] == 64 and result["n_train_statements"] == 18
