"""GRPO with verifiable rewards: TRL's GRPOTrainer on prompts, scored by reasoning-gym's own checkers (offline) or by
math-verify against the dataset's answer (TRL's `accuracy_reward`)."""

from __future__ import annotations

import importlib.util
import re

from trl import GRPOConfig, GRPOTrainer

from ..errors import RewindError
from . import checkpoints, data
from .schema import DataSpec, RewardSpec

CONFIG = GRPOConfig
_ANSWER_TAGS = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def _text(completion) -> str:
    """A completion's text: conversational prompts give [{"role": "assistant", "content": ...}]."""
    return completion[0]["content"] if isinstance(completion, list) else completion


def reasoning_gym_reward(spec: DataSpec):
    """Each row's generator scores its own item; the answer is the <answer> span, else the whole text (the 135M
    model rarely writes tags at first, and a tag-only reward would be all zero)."""
    from reasoning_gym.utils import extract_answer

    generators = data.reasoning_gym_datasets(spec)

    def reasoning_gym(completions, rg_source, rg_index, **_):
        scores = []
        for completion, source, index in zip(completions, rg_source, rg_index, strict=True):
            text = _text(completion)
            answer = extract_answer(text) or text.strip()
            scores.append(float(generators[source].score_answer(answer=answer, entry=generators[source][int(index)])))
        return scores

    return reasoning_gym


def answer_tags(completions, **_):
    """A format signal: 1 when the completion puts its answer in <answer></answer> tags."""
    return [1.0 if _ANSWER_TAGS.search(_text(c)) else 0.0 for c in completions]


def reward_functions(reward: RewardSpec, spec: DataSpec) -> tuple[list, list[float]]:
    """(reward functions, their weights) for the recipe."""
    if reward.type == "reasoning_gym":
        funcs = [reasoning_gym_reward(spec)]
    else:
        if importlib.util.find_spec("math_verify") is None:
            raise RewindError("reward.type=math needs math-verify: pip install math-verify")
        from trl.rewards import accuracy_reward

        funcs = [accuracy_reward]
    weights = [1.0]
    if reward.format_weight:
        funcs.append(answer_tags)
        weights.append(reward.format_weight)
    return funcs, weights


def make_trainer(model, tokenizer, rows, args: dict, reward: RewardSpec, spec: DataSpec, callbacks):
    funcs, weights = reward_functions(reward, spec)
    cls = checkpoints.trainer_class(GRPOTrainer)
    return cls(
        model=model,
        reward_funcs=funcs,
        args=GRPOConfig(**args, reward_weights=weights),
        train_dataset=rows.remove_columns(["completion"]),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
