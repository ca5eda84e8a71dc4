"""Probe data and forward passes: a suite's items as text, and hooks that see each module's inputs or outputs
token by token (padding removed).

Texts come from the suites' own lm-eval tasks (the same YAMLs, data files and split policy the Evaluator uses), so
a probe sees each item as evaluation shows it to the model: the task's description and prompt (inside the chat
template for tasks whose metadata asks for it), followed by the gold answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import RewindError
from ..evaluate import harness
from ..evaluate.suites import SPLITS
from ..progress import Bar

DATA = ("general", "target")


@dataclass(frozen=True)
class Probe:
    """Which data a data-driven diagnostic runs on, and how much of it."""

    data: tuple[str, ...] = DATA  # "general" (general-offline) and/or "target" (the `target` suite)
    target: str = "math-offline"  # any suite the sweep takes, its tasks looked up in include_path first
    split: str = "validation"
    limit: int = 32  # items per data set, taken round-robin over the suite's tasks
    batch_size: int = 8
    max_length: int = 512  # tokens per item (longer items are cut)
    include_path: tuple[str, ...] = ()  # dirs of task YAMLs, as lm-eval's --include_path

    def suites(self) -> dict[str, str]:
        unknown = set(self.data) - set(DATA)
        if unknown or not self.data:
            raise RewindError(f"--data {','.join(self.data)}: choose general and/or target")
        if self.split not in SPLITS:
            raise RewindError(f"--split {self.split}: choose one of {', '.join(SPLITS)}")
        if self.limit < 1 or self.batch_size < 1 or self.max_length < 2:
            raise RewindError("--limit, --batch-size must be at least 1 and --max-length at least 2")
        return {d: "general-offline" if d == "general" else self.target for d in self.data}


def texts(
    suite: str, split: str = "validation", limit: int | None = None, tokenizer=None, include_path: Sequence[str] = ()
) -> list[str]:
    """Up to `limit` items of a suite's `split` phase as text, round-robin over its lm-eval tasks."""
    [resolved] = harness.resolve_suites([suite], include_path)
    tasks = []
    for name in resolved.tasks:
        for task in harness.load(resolved, name)["tasks"].values():
            tasks.append((task, harness.phase_docs(task, split)))
    order = [
        (t, i) for i in range(max(len(docs) for _, docs in tasks)) for t in range(len(tasks)) if i < len(tasks[t][1])
    ]
    return [_text(tasks[t][0], tasks[t][1][i], tokenizer) for t, i in order[:limit]]


def _text(task, doc, tokenizer) -> str:
    answer = task.doc_to_target(doc)
    if task.config.output_type == "multiple_choice":
        answer = answer[0] if isinstance(answer, list) else answer
        answer = task.doc_to_choice(doc)[answer] if isinstance(answer, int) else answer
    elif isinstance(answer, list):
        answer = answer[0]
    answer = str(answer)
    context = (task.config.description or "") + task.doc_to_text(doc)
    chat = bool((task.get_config("metadata") or {}).get("chat_template"))
    if chat and tokenizer is not None and tokenizer.chat_template:
        return (
            tokenizer.apply_chat_template(
                [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True
            )
            + answer
        )
    if not context or answer[:1].isspace():
        return context + answer
    return context + task.config.target_delimiter + answer


@torch.no_grad()
def stream(
    model,
    tokenizer,
    texts: Sequence[str],
    modules: Mapping[str, Callable[[torch.Tensor], None]],
    where: str = "input",
    batch_size: int = 8,
    max_length: int = 512,
    max_tokens: int | None = None,
    desc: str = "forward",
) -> int:
    """Run `texts` through `model`; `modules[name]` gets each batch's [tokens, features] input or output of
    that module, padding removed, in token order. Stops after `max_tokens` tokens. Returns the tokens seen."""
    if where not in ("input", "output"):
        raise ValueError("where: input or output")
    valid: dict[str, torch.Tensor] = {}
    handles = _tap(model, modules, where, valid)
    device = next(model.parameters()).device
    seen = 0
    try:
        for start in Bar(range(0, len(texts), batch_size), desc=desc, unit="batch", leave=False):
            # Right padding: with causal attention the real tokens never see the pads, and keep their positions.
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                padding_side="right",
            )
            mask = batch["attention_mask"].bool()
            if max_tokens is not None:
                mask &= mask.flatten().cumsum(0).view_as(mask) <= max_tokens - seen
            valid["mask"] = mask.to(device)
            model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            )
            seen += int(mask.sum())
            if max_tokens is not None and seen >= max_tokens:
                break
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _tap(model, modules: Mapping[str, Callable[[torch.Tensor], None]], where: str, valid: dict) -> list:
    """Hooks that hand each named module's input or output, at the tokens of valid["mask"], to its consumer."""
    named = dict(model.named_modules())

    def hook(consume):
        if where == "input":
            return lambda module, args: consume(args[0][valid["mask"]])
        return lambda module, args, out: consume((out[0] if isinstance(out, tuple) else out)[valid["mask"]])

    register = "register_forward_pre_hook" if where == "input" else "register_forward_hook"
    return [getattr(named[name], register)(hook(consume)) for name, consume in modules.items()]
