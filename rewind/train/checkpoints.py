"""What a training run leaves on disk, and how it resumes.

    out_dir/
      recipe.yaml            the resolved recipe
      train_log.jsonl        one line per Trainer log (loss, lr, grad norm, rewards, ...)
      adapter_model.safetensors, adapter_config.json, rewind_adapter.json   the final adapter (a full HF model
                             for method `full`)
      checkpoint-<step>/     every `save_steps`: the adapter at that step (+ optimizer state for resuming)
      init_adapter/          residual-init methods only: the step-0 adapter the conversion subtracts

Every adapter dir is relative to the true pretrained base: residual-init adapters (PiSSA, MiLoRA) are saved converted
(peft's `path_initial_model_for_weight_conversion`: dW = s(BA - B0A0) as a rank-2r plain LoRA).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import TrainerCallback

from .. import methods
from ..errors import RewindError
from . import inits

RECIPE_FILE, LOG_FILE, INIT_DIR = "recipe.yaml", "train_log.jsonl", "init_adapter"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """The checkpoint-<step> dirs of a run, by step."""
    return sorted((p for p in Path(out_dir).glob("checkpoint-*") if _CHECKPOINT.match(p.name)), key=step_of)


def step_of(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(checkpoint.name).group(1))


def sidecar(method: str, base: str, recipe: str, seed: int, step: int) -> dict:
    return {"method": method, "base": base, "recipe": recipe, "seed": seed, "step": step}


def write_sidecar(directory: Path, side: dict) -> None:
    (directory / methods.SIDECAR).write_text(json.dumps(side, indent=1) + "\n")


def save(model, directory: Path, method: methods.Method, side: dict, out_dir: Path, tokenizer=None) -> None:
    """The adapter (converted for residual-init methods) or full model, plus rewind's sidecar."""
    directory.mkdir(parents=True, exist_ok=True)
    if method.peft_type is None:
        model.save_pretrained(directory)
    elif method.residual_init:
        # peft's conversion loads the step-0 adapter as a scratch adapter: its random init would advance the
        # training RNG (other dropout masks from here on) and its load leaves the model in eval mode.
        was_training = model.training
        with torch.random.fork_rng():
            model.save_pretrained(
                directory,
                selected_adapters=[inits.ADAPTER],
                path_initial_model_for_weight_conversion=str(out_dir / INIT_DIR),
            )
        model.train(was_training)
    else:
        model.save_pretrained(directory, selected_adapters=[inits.ADAPTER])
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    write_sidecar(directory, side)


def save_init(model, out_dir: Path) -> None:
    """The step-0 adapter of a residual-init method (its config must say init_lora_weights=True: see run.py)."""
    model.save_pretrained(out_dir / INIT_DIR, selected_adapters=[inits.ADAPTER])


def trim_log(out_dir: Path, step: int) -> None:
    """Drop log lines past `step` (a resumed run logs those steps again)."""
    path = out_dir / LOG_FILE
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


class RewindCallback(TrainerCallback):
    """Logs to train_log.jsonl, makes each checkpoint a rewind adapter dir, and steps AdaLoRA's rank allocator."""

    def __init__(self, out_dir: Path, method: methods.Method, side: dict):
        self.out_dir, self.method, self.side = out_dir, method, side

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.out_dir / LOG_FILE, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        # peft's AdaLoRA needs this after each optimizer step, while the gradients are still there.
        if self.method.peft_type == "ADALORA":
            model.base_model.update_and_allocate(state.global_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        directory = self.out_dir / f"checkpoint-{state.global_step}"
        side = {**self.side, "step": state.global_step}
        if self.method.residual_init:
            save(model, directory, self.method, side, self.out_dir)  # replaces the Trainer's residual-frame adapter
        else:
            write_sidecar(directory, side)


class ResumeMixin:
    """Resume from rewind's checkpoints: converted residual-init adapters reload into the training form, and
    KeepLoRA's lora_A stays frozen after the reload."""

    rewind_method: methods.Method

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = model if model is not None else self.model
        if self.rewind_method.residual_init:
            inits.load_converted(target, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        inits.freeze(target, self.rewind_method.name)


def trainer_class(base: type) -> type:
    return type(f"Rewind{base.__name__}", (ResumeMixin, base), {})


def latest(out_dir: Path) -> Path:
    found = checkpoint_dirs(out_dir)
    if not found:
        raise RewindError(f"resume=true: no checkpoint-* in {out_dir}")
    return found[-1]
