"""Supervised finetuning: TRL's SFTTrainer on conversational prompt/completion rows (loss on the completion only)."""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from . import checkpoints

CONFIG = SFTConfig


def make_trainer(model, tokenizer, rows, args: dict, callbacks):
    cls = checkpoints.trainer_class(SFTTrainer)
    return cls(
        model=model,
        args=SFTConfig(**args),
        train_dataset=rows.select_columns(["prompt", "completion"]),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
