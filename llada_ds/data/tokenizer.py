"""Tokenizers: our own sentencepiece BPE model, or an existing Hugging Face tokenizer folder.

Our model (``train_tokenizer``) is a sentencepiece BPE with byte fallback (no unknown tokens on
any input) trained with identity normalisation, no dummy prefix and no whitespace folding, so
that the same ``tokenizer.model`` wrapped by transformers' Llama tokenizer
(``legacy=False, add_prefix_space=False``) gives identical ids: what we train on is what an
exported model sees. Reserved ids, fixed by construction:

    0 <unk>   1 <s> (BOS)   2 </s> (EOS, also used as padding)   3 <|mdm_mask|> (mask)
    4 <|eot_id|>   5 <|start_header_id|>   6 <|end_header_id|>

The mask and chat tokens are sentencepiece user-defined symbols (one id each). A Hugging Face
folder (e.g. a released LLaDA tokenizer, whose mask <|mdm_mask|> is id 126336 and is not its
`mask_token`) is found by the same token strings.

Text is always encoded as plain text: a document that happens to contain the string
"<|mdm_mask|>" or a chat header gets ordinary pieces for it, never the special id (a literal mask
id in training data would corrupt the diffusion objective). Chat formatting inserts special ids
explicitly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import TokenizerError
from .storage import LocalStorage, is_uri, local_copy

SP_MODEL = "tokenizer.model"
META = "llada_tokenizer.json"

def is_tokenizer_file(name: str) -> bool:
    """Files of a tokenizer folder (ours, or a Hugging Face tokenizer inside a model folder)."""
    return name.startswith("tokenizer") or name in (META, "special_tokens_map.json", "added_tokens.json",
                                                    "vocab.json", "merges.txt")


MASK, EOT, START_HEADER, END_HEADER = "<|mdm_mask|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"
USER_SYMBOLS = [MASK, EOT, START_HEADER, END_HEADER]


@dataclass(frozen=True)
class SpecialIds:
    mask: int
    bos: int
    eos: int
    pad: int
    eot: int
    start_header: int
    end_header: int


class Tokenizer:
    """One interface over a sentencepiece model and a transformers tokenizer."""

    def __init__(self, backend, kind: str, special: SpecialIds, vocab_size: int, fingerprint: str, path: str):
        self._backend, self.kind = backend, kind
        self.special, self.vocab_size, self.fingerprint, self.path = special, vocab_size, fingerprint, path
        self._special_strings = {}
        for name in ("mask", "eot", "start_header", "end_header", "bos", "eos"):
            text = self._piece(getattr(special, name))
            if text:
                self._special_strings[text] = name
        self._special_re = re.compile("|".join(re.escape(s) for s in sorted(self._special_strings, key=len, reverse=True)))

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """A folder, or an object-store URI (copied to local disk first)."""
        if is_uri(path):
            try:
                path = local_copy(path)
            except FileNotFoundError:
                raise TokenizerError(f"{path}: no tokenizer found (no objects under this URI)") from None
        path = Path(path)
        if (path / SP_MODEL).is_file() and (path / META).is_file():
            return cls._load_sentencepiece(path)
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            return cls._load_transformers(path)
        raise TokenizerError(
            f"{path}: no tokenizer found (expected {SP_MODEL} + {META} from `llada-ds tokenizer train`, "
            "or a Hugging Face folder with tokenizer.json / tokenizer_config.json)"
        )

    @classmethod
    def _load_sentencepiece(cls, path: Path) -> "Tokenizer":
        import sentencepiece as spm

        data = (path / SP_MODEL).read_bytes()
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except Exception as exc:
            raise TokenizerError(f"{path / SP_MODEL}: not a sentencepiece model ({exc})") from None
        meta = json.loads((path / META).read_text())
        special = SpecialIds(**meta["special"])
        fingerprint = "sp-" + hashlib.sha256(data).hexdigest()[:16]
        return cls(sp, "sentencepiece", special, sp.get_piece_size(), fingerprint, str(path))

    @classmethod
    def _load_transformers(cls, path: Path) -> "Tokenizer":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        try:
            # trust_remote_code=False: a folder whose config.json maps AutoConfig to remote code (any
            # LLaDA folder) would otherwise make transformers ask on the terminal whether to run it;
            # the tokenizer itself never needs remote code.
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise TokenizerError(f"{path}: transformers could not load this tokenizer ({exc})") from None

        def find(token: str) -> int:
            i = tok.convert_tokens_to_ids(token)
            if i is None or i == tok.unk_token_id:
                raise TokenizerError(f"{path}: the tokenizer has no {token} token, which LLaDA training needs")
            return int(i)

        eos = tok.eos_token_id
        if eos is None:
            raise TokenizerError(f"{path}: the tokenizer defines no EOS token")
        bos = tok.bos_token_id if tok.bos_token_id is not None else eos
        special = SpecialIds(mask=find(MASK), bos=bos, eos=eos, pad=eos, eot=find(EOT),
                             start_header=find(START_HEADER), end_header=find(END_HEADER))
        h = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            if is_tokenizer_file(name) and name != META:
                h.update(name.encode() + (path / name).read_bytes())
        return cls(tok, "transformers", special, len(tok), "hf-" + h.hexdigest()[:16], str(path))

    # -- saving ----------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write this tokenizer as a Hugging Face tokenizer folder (AutoTokenizer, identical ids).

        Our own tokenizer also keeps its sentencepiece model and special ids there, so llada-ds
        reads the folder back as the same tokenizer (same fingerprint: shards built with it match).
        """
        out = Path(out_dir)
        if self.kind == "sentencepiece":
            transformers_tokenizer(self.path).save_pretrained(str(out))
            # transformers 5 saves tokenizer.json only; 4.x also needs the sentencepiece model itself.
            shutil.copyfile(Path(self.path) / SP_MODEL, out / SP_MODEL)
            shutil.copyfile(Path(self.path) / META, out / META)
        else:
            self._backend.save_pretrained(str(out))

    def copy_files(self, out_dir: str | os.PathLike) -> None:
        """Copy the tokenizer's own files (not the rest of a model folder) into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(Path(self.path).iterdir()):
            if f.is_file() and is_tokenizer_file(f.name):
                shutil.copyfile(f, out / f.name)

    # -- encoding --------------------------------------------------------------------------------
    def _piece(self, i: int) -> str:
        if self.kind == "sentencepiece":
            return self._backend.id_to_piece(i)
        return self._backend.convert_ids_to_tokens(i)

    # sentencepiece encodes a list on all cores by default; worker processes set 1 so that
    # parallel builds do not oversubscribe the machine.
    threads: int = -1

    def _raw_encode(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "sentencepiece":
            return self._backend.encode(texts, num_threads=self.threads)
        return self._backend(texts, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, as plain text (no special ids, no BOS/EOS added)."""
        out = self._raw_encode(list(texts))
        for row, text in enumerate(texts):
            if self._special_re.search(text):
                out[row] = self._encode_literal(text)
        return out

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def _encode_literal(self, text: str) -> list[int]:
        # Encode each special string in two halves: neither half matches a special token.
        parts, last = [], 0
        for m in self._special_re.finditer(text):
            parts += [text[last : m.start()], m.group()[:1], m.group()[1:]]
            last = m.end()
        parts.append(text[last:])
        return [i for ids in self._raw_encode([p for p in parts if p]) for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "sentencepiece":
            return self._backend.decode(ids)
        return self._backend.decode(ids, clean_up_tokenization_spaces=False)


def _lines(documents: Iterable[str]) -> Iterator[str]:
    # sentencepiece trains on "sentences" of at most max_sentence_length bytes: feed lines.
    for doc in documents:
        for line in doc.split("\n"):
            if line.strip():
                yield line


def train_tokenizer(
    documents: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 4096,
    max_sentences: int = 5_000_000, threads: int | None = None,
) -> Tokenizer:
    """Train our sentencepiece BPE model on documents and write it to out_dir."""
    import sentencepiece as spm

    reserved = 3 + len(USER_SYMBOLS) + 256  # unk/bos/eos, our symbols, byte pieces
    if vocab_size <= reserved:
        raise TokenizerError(f"tokenizer vocab_size {vocab_size} must exceed the {reserved} reserved pieces")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(documents), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=USER_SYMBOLS,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            num_threads=threads or os.cpu_count() or 1, minloglevel=2,
        )
    except RuntimeError as exc:
        raise TokenizerError(f"sentencepiece training failed: {exc}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = SpecialIds(mask=3, bos=1, eos=2, pad=2, eot=4, start_header=5, end_header=6)
    storage = LocalStorage(out)
    storage.write_atomic(SP_MODEL, model.getvalue())
    storage.write_atomic(META, (json.dumps({"special": asdict(special), "vocab_size": vocab_size}, indent=1) + "\n").encode())
    tok = Tokenizer.load(out)
    for name, text in (("mask", MASK), ("eot", EOT), ("start_header", START_HEADER), ("end_header", END_HEADER)):
        if tok._piece(getattr(special, name)) != text:  # guards against a sentencepiece id-layout change
            raise TokenizerError(f"{out / SP_MODEL}: {text} did not get id {getattr(special, name)}")
    return tok


def transformers_tokenizer(tokenizer_dir: str | os.PathLike):
    """Our sentencepiece model as a transformers tokenizer with identical ids (for export and tests)."""
    import transformers
    from transformers import LlamaTokenizer

    kwargs = dict(legacy=False, add_prefix_space=False, add_bos_token=False, add_eos_token=False,
                  clean_up_tokenization_spaces=False, pad_token="</s>")
    path = Path(tokenizer_dir)
    if transformers.__version__.startswith("4."):
        from transformers import LlamaTokenizerFast

        return LlamaTokenizerFast(vocab_file=str(path / SP_MODEL), from_slow=True, **kwargs)
    # transformers 5 builds the vocabulary only through from_pretrained on a folder.
    return LlamaTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
