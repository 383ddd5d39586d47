"""The reversal-curse experiment (experiments/reversal.py)."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.reversal import (
    ReversalSettings,
    encode,
    encode_rows,
    infill_canvas,
    layout_of,
    main,
    make_facts,
    slot_text,
    training_statements,
)
from llada_ds.data.tokenizer import train_tokenizer

# A CI-sized run: 12 facts, a 2-layer d_model-64 model; both objectives reach 1.0 forward by
# step 700 (measured: diffusion 0.33 at step 300), chance is 1/24.
SMALL = ["--facts", "12", "--vocab-size", "300", "--d-model", "64", "--n-layers", "2", "--n-heads", "4",
         "--n-kv-heads", "2", "--ffn-hidden-size", "128", "--steps", "700", "--batch-size", "32", "--lr", "3e-3",
         "--warmup-steps", "20", "--seeds", "0"]


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


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    facts = make_facts(ReversalSettings(facts=12))
    statements = training_statements(facts)
    tok = train_tokenizer((" " + s for s in statements), tmp_path_factory.mktemp("tok"), vocab_size=300, threads=1)
    return tok, facts, statements


def test_every_statement_is_trained_after_every_eos_run_and_the_infill_canvas_is_a_row_masked(tokenizer):
    tok, facts, statements = tokenizer
    layout = layout_of(tok, facts)
    longest_name = max(len(encode(tok, n)) for f in facts for n in (f.child, f.parent))
    assert layout.slot == longest_name + 1 and layout.lead == longest_name
    rows = encode_rows(tok, statements, layout).tolist()
    eos, bos, mask = tok.special.eos, tok.special.bos, tok.special.mask
    assert len(rows) == len(statements) * (layout.lead + 1)
    for i, s in enumerate(statements):
        ids = [bos] + encode(tok, s)
        for r in range(layout.lead + 1):  # r EOS, BOS, the statement, EOS to the end
            assert rows[i * (layout.lead + 1) + r] == [eos] * r + ids + [eos] * (layout.length - r - len(ids))
    for f in facts:
        canvas = infill_canvas(tok, f, layout)
        assert len(canvas) == layout.length and canvas[: layout.slot] == [mask] * layout.slot
        assert mask not in canvas[layout.slot:]
        # Filling the masked span with the right EOS run, BOS and the subject gives a training row:
        # the question is asked exactly where the statement was trained, only its subject unknown.
        subject = encode(tok, f.child)
        filled = [eos] * (layout.slot - 1 - len(subject)) + [bos] + subject + canvas[layout.slot:]
        assert filled in rows
        assert slot_text(tok, filled[: layout.slot]) == f.child


def test_the_name_of_an_infilled_span_is_read_after_its_last_bos(tokenizer):
    tok, facts, _ = tokenizer
    eos, bos = tok.special.eos, tok.special.bos
    name = encode(tok, facts[0].child)
    assert slot_text(tok, [eos, eos, bos] + name) == facts[0].child
    assert slot_text(tok, name + [eos]) == facts[0].child  # no BOS: EOS dropped
    assert slot_text(tok, [bos] + encode(tok, "Xy") + [bos] + name) == facts[0].child
    assert slot_text(tok, [eos, eos, eos]) == ""


@pytest.mark.timeout(600)
def test_small_run_memorises_forward_facts_and_prints_the_measured_table(tmp_path, capsys, one_thread):
    out = tmp_path / "result.json"
    assert main(SMALL + ["--json", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    (seed,) = result["seeds"]
    for objective in ("diffusion", "autoregressive"):
        test, both = seed["accuracy"][objective]["test"], seed["accuracy"][objective]["both"]
        # Trained directions are memorised (chance is 1/24): the training and the decoding work.
        assert test["forward"] >= 0.8 and both["forward"] >= 0.8 and both["template"] >= 0.8, (test, both)
        assert 0 <= test["template"] <= 1
        # The table prints the evaluation's own figures for this objective.
        row = next(line for line in printed.splitlines() if line.split()[:2] == ["0", objective])
        assert row.split()[2:4] == [f"{test['forward']:.2f}", "cannot" if objective == "autoregressive"
                                    else f"{test['infill']:.2f}"]
    diffusion, ar = seed["accuracy"]["diffusion"]["test"], seed["accuracy"]["autoregressive"]["test"]
    # Only the diffusion model is asked by infilling; only the AR model by ranking candidates, which
    # uses the memorised forward statement and so finds the subject as well as the forward question.
    assert 0 <= diffusion["infill"] <= 1 and ar["infill"] is None
    assert ar["scoring"] >= 0.8 and diffusion["scoring"] is None
    assert result["chance"] == 1 / 24 and "chance 0.042 (1 of 24 names)" in printed
    assert result["settings"]["model_overrides"]["d_model"] == 64 and seed["n_train_rows"] == 18 * (seed["slot"])
