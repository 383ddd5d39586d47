"""The bundled instruction task (examples/instruct_task.py) and exact match on it."""

import json

import pytest

from examples.instruct_task import generate_task, main

from llada_ds.data.tokenizer import Tokenizer
from llada_ds.diffusion.sampler import SamplerConfig
from llada_ds.evaluation import instruction_exact_match
from llada_ds.model import ModelConfig, build_model


def test_instruction_task_is_seeded_disjoint_and_correct(tmp_path, sp_tokenizer):
    counts = generate_task(tmp_path / "a", 300, 40, seed=3)
    generate_task(tmp_path / "b", 300, 40, seed=3)
    assert counts == {"train": 300, "test": 40}
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    train = [json.loads(x)["messages"] for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (tmp_path / "a" / "test.jsonl").read_text().splitlines()]
    assert not {m[0]["content"] for m in train} & {t["prompt"] for t in test}
    for t in test:  # every answer checks out against its instruction
        p, a = t["prompt"], t["answer"]
        if p.startswith("Repeat: "):
            assert a == p[8:]
        elif p.startswith("Reverse: "):
            assert a.split() == p[9:].split()[::-1]
        elif p.startswith("Sort: "):
            assert a.split() == sorted(p[6:].split(), key=int)
        elif p.startswith("Add: "):
            assert int(a) == sum(int(x) for x in p[5:].split("+"))
        else:
            pairs = dict(kv.split("=") for kv in p.split(".")[0].split())
            assert pairs[p.split("What is ")[1].rstrip("?")] == a
    tok = Tokenizer.load(sp_tokenizer)
    model = build_model(ModelConfig(vocab_size=4096, d_model=32, n_layers=1, n_heads=2, ffn_hidden_size=64)).eval()
    r = instruction_exact_match(model, tok, tmp_path / "a" / "test.jsonl", SamplerConfig(gen_length=8, steps=8), limit=5)
    assert r["n"] == 5 and 0 <= r["exact_match"] <= 1 and len(r["examples"]) == 3


def test_easy_task_families_answer_with_tokens_of_the_prompt(tmp_path, sp_tokenizer):
    generate_task(tmp_path, 200, 50, seed=1, tasks=("copy", "lookup"))
    tok = Tokenizer.load(sp_tokenizer)
    test = [json.loads(x) for x in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert {t["prompt"].split(":")[0] for t in test} == {"Copy", "Keys"}
    for t in test:
        p, a = t["prompt"], t["answer"]
        if p.startswith("Copy: "):
            assert a == p[6:] and len(a.split()) in (3, 4)
        else:
            pairs = dict(kv.split("=") for kv in p[6:].split(".")[0].split())
            assert pairs[p.split("What is ")[1].rstrip("?")] == a
        # Why these families are easy: the answer's tokens are a run of the prompt's tokens.
        pt, at = tok.encode(p), tok.encode(a)
        assert any(pt[i : i + len(at)] == at for i in range(len(pt))), (p, a)


def test_unknown_or_exhausted_task_families_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown or no task families.*choose from repeat"):
        generate_task(tmp_path, 10, 2, tasks=("copy", "poetry"))
    with pytest.raises(ValueError, match="unknown or no task families"):
        generate_task(tmp_path, 10, 2, tasks=())
    with pytest.raises(ValueError, match="cannot draw 11000 distinct train examples for tasks copy"):
        generate_task(tmp_path, 11000, 2, tasks=("copy",))  # there are 11,000 copy instructions in all


def test_the_script_writes_the_task_and_refuses_unknown_families(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--train", "20", "--test", "5", "--tasks", "copy"]) == 0
    assert "20 training conversations" in capsys.readouterr().out
    assert len((tmp_path / "test.jsonl").read_text().splitlines()) == 5
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(tmp_path), "--tasks", "poetry"])
    assert exited.value.code == 2 and "invalid choice: 'poetry'" in capsys.readouterr().err
