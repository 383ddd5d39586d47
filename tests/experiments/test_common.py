"""The experiments' shared figures (experiments/common.py) against plainly written references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.common import (
    Optimisation,
    ar_log_likelihood,
    chance,
    exact_match,
    format_table,
    greedy,
    train_model,
    training_flops,
)
from llada_ds.data.batch import MicroBatch
from llada_ds.model import ModelConfig, build_model

CFG = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=48,
                  max_seq_len=16, attention="eager")


def test_exact_match_is_the_share_of_equal_answers():
    assert exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    assert exact_match([3], [3]) == 1.0
    with pytest.raises(ValueError, match="2 answers for 3 questions"):
        exact_match([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="no questions"):
        exact_match([], [])


def test_chance_is_one_over_the_candidates():
    assert chance(200) == 0.005 and chance(4) == 0.25 and chance(1) == 1.0
    with pytest.raises(ValueError):
        chance(0)


def test_training_flops_follow_the_written_formula():
    # Per layer: q and o (32 x 32), k and v (32 x 16: 2 KV heads of 8), gate, up, down (32 x 48);
    # plus the output head (40 x 32). The embedding is a lookup, not a matmul; the norm weights
    # (two per layer and a final one) are counted with the matrices, as model/sizing.py does.
    d, kv, ffn, layers, vocab, seq = 32, 16, 48, 2, 40, 16
    matmul = layers * (2 * d * d + 2 * d * kv + 3 * d * ffn) + vocab * d + (2 * layers + 1) * d
    per_token = 6 * matmul + 12 * layers * d * seq
    assert training_flops(CFG, seq, 1000) == per_token * 1000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CFG).eval()


def test_ar_log_likelihood_equals_token_by_token_prediction(model):
    prompt = [5, 9, 11]
    continuations = [[7], [7, 8, 20], [30, 1, 2], [12, 12]]
    got = ar_log_likelihood(model, prompt, continuations)
    for cont, value in zip(continuations, got):
        ref, seq = 0.0, list(prompt)
        for t in cont:  # the causal model on the prefix alone, one token at a time
            with torch.no_grad():
                logits = model(torch.tensor([seq]), causal=True)[0, -1]
            ref += F.log_softmax(logits.double(), -1)[t].item()
            seq.append(t)
        assert value == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="prompt is empty"):
        ar_log_likelihood(model, [], [[1]])


def test_greedy_appends_the_most_likely_next_token(model):
    prompts = torch.tensor([[5, 9, 11], [1, 2, 3]])
    out = greedy(model, prompts, 3)
    for row, prompt in zip(out.tolist(), prompts.tolist()):
        seq = list(prompt)
        for t in row:
            scores = ar_log_likelihood(model, seq, [[v] for v in range(CFG.vocab_size)])
            assert t == max(range(CFG.vocab_size), key=scores.__getitem__)
            seq.append(t)


def test_both_objectives_start_from_the_same_weights_and_see_the_same_batches():
    seen: dict = {"diffusion": [], "autoregressive": []}

    def batches_for(kind):
        def batches(step):
            seen[kind].append(step)
            g = torch.Generator().manual_seed(step)
            return [MicroBatch(torch.randint(5, 40, (4, 16), generator=g), list(range(4 * step, 4 * step + 4)))]
        return batches

    # A learning rate of 0 leaves the weights as they were built: what each objective started from.
    opt = Optimisation(steps=3, lr=0.0, warmup_steps=0)
    looked: list = []
    trained = {k: train_model(k, CFG, batches_for(k), opt, mask_id=3, seed=7, log=lambda _: None,
                              after_step=lambda done, m: looked.append((done, m.training))) for k in seen}
    assert looked == [(1, True), (2, True), (3, True)] * 2
    torch.manual_seed(7)
    reference = build_model(CFG).state_dict()
    for t in trained.values():
        assert len(t.losses) == 3 and all(torch.isfinite(torch.tensor(t.losses)))
        assert all(torch.equal(t.model.state_dict()[k], v) for k, v in reference.items())
    assert seen["diffusion"] == seen["autoregressive"] == [0, 1, 2]
    with pytest.raises(ValueError, match="not one of"):
        train_model("causal", CFG, batches_for("diffusion"), opt, 3, 0)


def test_tables_align_labels_left_and_figures_right():
    text = format_table(["model", "acc"], [["diffusion", "0.50"], ["ar", "1.00"]], title="t")
    assert text.splitlines() == ["t", "model       acc", "---------  ----", "diffusion  0.50", "ar         1.00"]
