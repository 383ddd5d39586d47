import json

import pytest

from llada_ds.data.tokenizer import (
    END_HEADER, EOT, MASK, START_HEADER, Tokenizer, TokenizerError, train_tokenizer, transformers_tokenizer,
)

STRESS = ("Tab\there  two  spaces\r\nCRLF\u00a0nbsp \u3000ideo \u200bzw \U0001F600 e\u0301 \u6f22\u5b57 "
          "\u041f\u0440\u0438\u0432\u0435\u0442 12345 3.14\n\n\n  trailing   ")


def test_reserved_ids_and_byte_fallback(sp_tokenizer):
    tok = Tokenizer.load(sp_tokenizer)
    s = tok.special
    assert (s.mask, s.bos, s.eos, s.pad, s.eot, s.start_header, s.end_header) == (3, 1, 2, 2, 4, 5, 6)
    assert tok.vocab_size == 4096 and tok.kind == "sentencepiece"
    ids = tok.encode(STRESS)
    assert tok.decode(ids) == STRESS  # identity normalisation, byte fallback: lossless on any text
    assert max(ids) < 4096


def test_literal_special_strings_are_encoded_as_plain_text(sp_tokenizer):
    tok = Tokenizer.load(sp_tokenizer)
    text = f"a{MASK}b{EOT}{START_HEADER}user{END_HEADER} <s> </s>"
    ids = tok.encode(text)
    assert not set(ids) & {1, 2, 3, 4, 5, 6}
    assert tok.decode(ids) == text
    assert tok.encode_batch(["plain", text]) == [tok.encode("plain"), ids]


def test_transformers_wrapper_gives_identical_ids_on_the_corpus(sp_tokenizer, shakespeare_texts, tmp_path):
    tok = Tokenizer.load(sp_tokenizer)
    hf = transformers_tokenizer(sp_tokenizer)
    texts = [p.read_text() for p in shakespeare_texts] + [STRESS]
    for text in texts:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    # Saved as a Hugging Face folder, reloaded offline with AutoTokenizer: still identical.
    from transformers import AutoTokenizer

    hf.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert again.encode(texts[0], add_special_tokens=False) == tok.encode(texts[0])
    # ...and our loader reads that folder as a transformers tokenizer with the same special ids.
    loaded = Tokenizer.load(tmp_path)
    assert loaded.kind == "transformers"
    assert loaded.special == tok.special
    assert loaded.encode(texts[1]) == tok.encode(texts[1])


def _wordlevel_folder(path, vocab, **specials):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", **specials).save_pretrained(path)


def test_released_llada_layout_is_found_by_token_strings(tmp_path):
    # A folder laid out like LLaDA's released tokenizer: mask 126336, EOS 126081, BOS 126080.
    vocab = {f"w{i}": i for i in range(126464)}
    for token, i in (("<unk>", 0), ("<|startoftext|>", 126080), ("<|endoftext|>", 126081),
                     (MASK, 126336), (EOT, 126348), (START_HEADER, 126346), (END_HEADER, 126347)):
        vocab.pop(f"w{i}")
        vocab[token] = i
    _wordlevel_folder(tmp_path, vocab, bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    tok = Tokenizer.load(tmp_path)
    assert (tok.special.mask, tok.special.eos, tok.special.pad, tok.special.bos, tok.special.eot) == (
        126336, 126081, 126081, 126080, 126348)
    assert tok.encode("w5 w7") == [5, 7]
    assert tok.fingerprint.startswith("hf-")


def test_a_folder_without_the_mask_token_is_refused(tmp_path):
    _wordlevel_folder(tmp_path, {"<unk>": 0, "a": 1, "</s>": 2}, eos_token="</s>")
    with pytest.raises(TokenizerError, match=r"has no <\|mdm_mask\|> token"):
        Tokenizer.load(tmp_path)


def test_missing_folder_and_tiny_vocab_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        Tokenizer.load(tmp_path)
    with pytest.raises(TokenizerError, match="must exceed the 263 reserved"):
        train_tokenizer(["some text"], tmp_path, vocab_size=200)


def test_training_is_deterministic_and_fingerprints_differ_by_model(sp_tokenizer, shakespeare_texts, tmp_path):
    again = train_tokenizer((p.read_text() for p in shakespeare_texts), tmp_path / "a", vocab_size=4096, threads=2)
    assert again.fingerprint == Tokenizer.load(sp_tokenizer).fingerprint
    other = train_tokenizer((p.read_text() for p in shakespeare_texts[:5]), tmp_path / "b", vocab_size=1024, threads=2)
    assert other.fingerprint != again.fingerprint
    meta = json.loads((tmp_path / "a" / "llada_tokenizer.json").read_text())
    assert meta["special"]["mask"] == 3
