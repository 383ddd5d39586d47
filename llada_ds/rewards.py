"""Reward functions for reinforcement learning with verifiable rewards (GRPO, diffusion/grpo.py).

A reward function is a plain Python callable

    reward(prompt: str, completion: str, example: dict) -> float

where prompt is the last user turn, completion the sampled answer (cut at end-of-turn or EOS,
decoded) and example the prompt's record as read from the data (any fields: `answer`, test cases,
...). A run names it as `module:function` (grpo.reward), e.g. `my_rewards:format_and_answer`
with my_rewards.py importable (on PYTHONPATH, or installed). Built in: `exact_match`.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .errors import ConfigError, DataError

Reward = Callable[[str, str, dict], float]


def exact_match(prompt: str, completion: str, example: dict) -> float:
    """1.0 when the completion, stripped of surrounding spaces, equals the example's `answer`
    (the rule of `llada-ds eval --instruction-test`), else 0.0."""
    if "answer" not in example:
        raise DataError(f"the exact-match reward needs an 'answer' field; the example has {', '.join(example)}")
    return float(completion.strip() == str(example["answer"]))


def load_reward(spec: str) -> Reward:
    """The callable a `module:function` names."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"grpo.reward={spec!r} must look like module:function (e.g. llada_ds.rewards:exact_match)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"grpo.reward={spec!r}: cannot import {module_name} ({exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"grpo.reward={spec!r}: {module_name} has no function {name!r}")
    return fn
