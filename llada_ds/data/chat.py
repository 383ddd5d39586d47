"""The chat format of the released LLaDA instruct model (docs/llada.md, "SFT").

    BOS, then per turn  <|start_header_id|>ROLE<|end_header_id|>\\n\\nCONTENT<|eot_id|>
and a generation prompt ends with the assistant header. Special tokens are inserted by id; the
role and content are encoded as plain text, so a message can never forge a header or a mask.
"""

from __future__ import annotations

from typing import Sequence

from .tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


def _check(messages: Sequence[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}: content must be text")


def header_ids(tok: Tokenizer, role: str) -> list[int]:
    s = tok.special
    return [s.start_header] + tok.encode(role) + [s.end_header] + tok.encode("\n\n")


def encode_chat(tok: Tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a dialogue (each turn closed by end-of-turn), optionally + the assistant header."""
    _check(messages)
    ids = [tok.special.bos]
    for m in messages:
        ids += header_ids(tok, m["role"]) + tok.encode(m["content"]) + [tok.special.eot]
    if add_generation_prompt:
        ids += header_ids(tok, "assistant")
    return ids


def decode_chat(tok: Tokenizer, ids: Sequence[int]) -> list[dict]:
    """The inverse of encode_chat (without a trailing generation prompt)."""
    s = tok.special
    ids = list(ids)
    if not ids or ids[0] != s.bos:
        raise ValueError("a chat sequence starts with BOS")
    messages, i = [], 1
    while i < len(ids):
        if ids[i] != s.start_header:
            raise ValueError(f"position {i}: expected a header, got token {ids[i]}")
        end = ids.index(s.end_header, i)
        role = tok.decode(ids[i + 1 : end])
        close = ids.index(s.eot, end)
        body = tok.decode(ids[end + 1 : close])
        if not body.startswith("\n\n"):
            raise ValueError(f"position {end}: a header is followed by a blank line")
        messages.append({"role": role, "content": body[2:]})
        i = close + 1
    return messages
