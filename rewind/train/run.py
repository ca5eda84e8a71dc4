"""`train()`: one recipe in, one run dir out (see rewind.train.checkpoints for its layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from .. import methods, models, outdir
from ..errors import RewindError
from . import checkpoints, data, inits
from .recipe import load
from .schema import Recipe

# Keys a resumed run may change: it can be asked to train for longer.
_RESUMABLE_CHANGES = {"resume", "trainer.max_steps", "trainer.num_train_epochs"}


def train(
    recipe: str | Path | dict,
    overrides: list[str] | tuple[str, ...] = (),
    out_dir: str | Path = "",
    callbacks: list | tuple = (),
) -> Path:
    """Train `recipe` (a YAML path, a shipped name like "sft/lora", or a dict) with `key=value` overrides into
    `out_dir`; returns `out_dir`, which then holds the final adapter (or full model) and checkpoint-<step> dirs.
    `callbacks`: extra transformers TrainerCallbacks (live plots in a notebook, early stopping, ...)."""
    if not out_dir:
        raise RewindError("train: give an out_dir")
    spec = load(recipe, overrides)
    out = Path(out_dir)
    # A full finetune saves model.safetensors and config.json into out: out = a local base would overwrite it.
    outdir.check_spares_inputs(out, {"base": Path(str(spec.base)).expanduser() if spec.base else None})
    device = models.pick_device(spec.device)  # a bad device fails before anything is written
    created = not out.exists()
    try:
        trainer, resume_from, side, tokenizer = _set_up(recipe, spec, out, device, callbacks)
    except BaseException:
        if created:  # a run that fails before its first step leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    side = {**side, "step": trainer.state.global_step}
    checkpoints.save(trainer.model, out, spec.method_info, side, out, tokenizer)
    return out


def _set_up(recipe, spec: Recipe, out: Path, device: str, callbacks):
    """Everything before the first step: out dir and recipe.yaml, data, model, trainer."""
    resume_from = _prepare(out, spec)
    method = spec.method_info
    source = str(recipe) if isinstance(recipe, (str, Path)) else "<dict>"
    side = checkpoints.sidecar(method.name, spec.base, source, spec.seed, 0)

    import transformers

    rows = data.build(spec.data)  # before the model: data errors come fast
    model, tokenizer = models.load_base(spec.base, device, spec.dtype)
    transformers.set_seed(spec.seed)  # the adapter's random init
    if method.config_class is not None:
        model = _peft_model(model, spec, tokenizer, rows, out, resuming=resume_from is not None)

    args = {
        **spec.trainer,
        "output_dir": str(out),
        "seed": spec.seed,
        "data_seed": spec.seed,
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        "report_to": "none",
        "use_cpu": device == "cpu",
    }
    callbacks = [checkpoints.RewindCallback(out, method, side), *callbacks]
    if spec.kind == "sft":
        from . import sft

        trainer = sft.make_trainer(model, tokenizer, rows, args, callbacks)
    else:
        from . import grpo

        trainer = grpo.make_trainer(model, tokenizer, rows, args, spec.reward, spec.data, callbacks)
    trainer.rewind_method = method
    if method.peft_type == "ADALORA" and "total_step" not in spec.peft:
        _set_adalora_steps(trainer)
    if resume_from is not None:
        checkpoints.trim_log(out, checkpoints.step_of(resume_from))
    return trainer, resume_from, side, tokenizer


def _prepare(out: Path, spec: Recipe) -> Path | None:
    """Check out_dir against the resume flag, write recipe.yaml; the checkpoint to resume from, if any."""
    recipe_file = out / checkpoints.RECIPE_FILE
    if spec.resume:
        latest = checkpoints.latest(out)
        if recipe_file.is_file():
            changed = _changed_keys(yaml.safe_load(recipe_file.read_text()) or {}, spec.to_dict()) - _RESUMABLE_CHANGES
            if changed:
                raise RewindError(
                    f"resume=true: the recipe differs from {recipe_file} in {', '.join(sorted(changed))}"
                    f"; a resumed run must keep its recipe (only max_steps/num_train_epochs may grow)"
                )
    else:
        latest = None
        # A run that died before its first checkpoint left nothing worth keeping: starting over is fine.
        if checkpoints.checkpoint_dirs(out) or (out / methods.SIDECAR).is_file():
            raise RewindError(
                f"{out} already holds a training run: pass resume=true to continue it, or use an empty out_dir"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        recipe_file.write_text(spec.to_yaml())
    except OSError as exc:
        raise RewindError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose another --out") from exc
    return latest


def _changed_keys(old: dict, new: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys |= _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.add(prefix + key)
    return keys


def _peft_model(model, spec: Recipe, tokenizer, rows, out: Path, resuming: bool):
    """The peft model with the method's init applied (and, for residual inits, the step-0 adapter saved)."""
    from peft import get_peft_model

    method = spec.method_info
    kwargs = {"task_type": "CAUSAL_LM", **spec.peft}
    if method.peft_type == "ADALORA" and "total_step" not in kwargs:
        # AdaLoraConfig insists on total_step > tinit + tfinal; the real count is set once the trainer knows it.
        merged = {**method.defaults, **kwargs}
        kwargs["total_step"] = merged.get("tinit", 0) + merged.get("tfinal", 0) + 1
    try:
        config = method.peft_config(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RewindError(f"peft: {method.config_class} rejects these options ({exc})") from exc
    model = get_peft_model(model, config)
    opts = inits.options(method.name, spec.init)
    if method.name == "keeplora" and resuming:
        inits.freeze(model, method.name)  # lora_A comes back from the checkpoint; no gradient pass needed
    else:
        inits.initialize(model, method.name, opts, tokenizer, rows, spec.seed)
    if method.residual_init:
        # The residual base is in place now: anything that re-creates this adapter from its config (the save
        # conversion, TRL's reference-adapter copy) must not decompose W0 again.
        model.peft_config[inits.ADAPTER].init_lora_weights = True
        if not resuming:
            checkpoints.save_init(model, out)
    return model


def _set_adalora_steps(trainer) -> None:
    """AdaLoRA's budget schedule needs the run's optimizer-step count, which only the trainer can compute."""
    steps = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    config = trainer.model.peft_config[inits.ADAPTER]
    if steps <= config.tinit + config.tfinal:
        raise RewindError(
            f"adalora: {steps} training steps leave no budgeting phase after tinit={config.tinit} and "
            f"tfinal={config.tfinal}: lower them (peft.tinit=..., peft.tfinal=...) or train longer"
        )
    trainer.model.base_model.rankallocator.set_total_step(steps)
