"""`rewind` command line: each command is a thin call into the library."""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import click

from . import __version__
from .errors import RewindError
from .sweep import DEFAULT_ALPHAS, DEFAULT_OUT as DEFAULT_SWEEP

_PATH_CHOICES = ["auto", "linear", "cayley", "dense", "layerwise"]


def _offline_defaults(online: bool) -> None:
    # Offline unless asked: without these, TRL, huggingface_hub and datasets each try a network call per load.
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rewind")
@click.option("--online", is_flag=True, envvar="REWIND_ONLINE",
              help="Allow hub downloads (models, hub tasks). Default: offline, local files and HF cache only.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, online, debug):
    """Rewind PEFT finetunes along parameterization-aware paths, evaluate, and export the best point."""
    _offline_defaults(online)
    if not debug:  # libraries' deprecation chatter is not the user's problem
        warnings.simplefilter("ignore", FutureWarning)
    ctx.obj = {"debug": debug}


def base_options(f):
    f = click.option("--init-adapter", type=click.Path(), default=None,
                     help="Step-0 adapter of a residual-init LoRA (PiSSA/OLoRA saved unconverted).")(f)
    f = click.option("--adapter", type=click.Path(), default=None, help="peft adapter dir or full checkpoint dir.")(f)
    f = click.option("--base", default=None,
                     help="Alias (smollm2 [default], qwen, llama), hub id or local model dir.")(f)
    return f


def path_options(multiple: bool = False):
    def decorate(f):
        f = click.option("--allow-extrapolation", is_flag=True, help="Allow alpha outside [0, 1].")(f)
        f = click.option("--cayley-scale", type=click.Choice(["linear", "sqrt"]), default="linear",
                         show_default=True, help="cayley path: generator scale s(alpha) = alpha or sqrt(alpha).")(f)
        f = click.option("--layers", "layers", default=None,
                         help="Per-layer alphas: ramp, balanced, a comma list (one per layer) or a JSON file.")(f)
        more = " Repeat to sweep several paths on one resident model." if multiple else ""
        f = click.option("--path", "path", type=click.Choice(_PATH_CHOICES), multiple=multiple,
                         default=("auto",) if multiple else "auto", show_default=True,
                         help=f"auto = the method's natural path (OFT: cayley, others: linear).{more}")(f)
        return f
    return decorate


def _path_and_schedule(path: str, layers: str | None):
    from .paths import Schedule

    if path == "layerwise":
        if layers is None:
            raise RewindError("--path layerwise needs --layers ramp|balanced|a,b,...")
        path = "auto"
    return path, Schedule.parse(layers)


@cli.command()
@base_options
@path_options()
@click.option("--alpha", type=float, default=None,
              help="Point on the path: 0 = base, 1 = finetune. Default: the last sweep's selected point, else 1.")
@click.option("--out", type=click.Path(), required=True, help="Output dir (must be empty or absent).")
@click.option("--format", "fmt", type=click.Choice(["merged", "adapter"]), default="merged", show_default=True,
              help="merged: HF checkpoint; adapter: a peft adapter scaled along its natural path (where exact).")
@click.option("--from", "sweep_dir", type=click.Path(), default=None,
              help="Sweep dir to take base, adapter and point from (default ./rewind-sweep when --adapter is absent).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--dry-run", is_flag=True, help="Check inputs and print the plan; write nothing.")
@click.option("--device", default="cpu", show_default=True, help="Where tensors are computed while streaming.")
def export(base, adapter, init_adapter, path, layers, cayley_scale, allow_extrapolation, alpha, out, fmt, sweep_dir,
           force, dry_run, device):
    """Write the model at one point of a path: merged checkpoint or peft adapter.

    With no --adapter, exports from the last sweep: its selected Pareto-best point, or --alpha on its path.
    """
    from . import export as exporter

    if adapter is None or sweep_dir is not None:
        base, adapter, init_adapter, path, layers, cayley_scale, alpha = _from_sweep(
            sweep_dir or DEFAULT_SWEEP, base, path, layers, cayley_scale, alpha)
    path, schedule = _path_and_schedule(path, layers)
    plan = exporter.plan(base, adapter, out, 1.0 if alpha is None else alpha, path, schedule, fmt, force,
                         init_adapter, cayley_scale, allow_extrapolation)
    click.echo(plan.summary())
    if dry_run:
        return
    exporter.write(plan, device)
    click.echo(f"wrote {out}")


def _from_sweep(sweep_dir, base, path, layers, cayley_scale, alpha):
    """Fill export's arguments from a sweep dir; explicit flags win."""
    from . import sweep

    record, summary = sweep.load(sweep_dir)
    spec = record["spec"]
    base = base if base is not None else spec["base"]
    layers = layers if layers is not None else spec["layers"]
    adapter, init_adapter = spec["adapter"], spec["init_adapter"]
    if alpha is None:
        if summary is None:
            raise RewindError(f"the sweep in {sweep_dir} has no selection yet (no summary.json): pass --alpha")
        chosen = summary["selected"]
        if chosen["path"] == "train":
            raise RewindError("the sweep selected a training checkpoint: export it with --adapter "
                              f"<checkpoint-{chosen['alpha']:g}> --alpha 1")
        alpha = {"base": 0.0, "final": 1.0}.get(chosen["path"], chosen["alpha"])
        if chosen["path"] not in ("base", "final"):
            path = chosen["path"]
    if path == "auto":
        path = record["paths"][0]
    return base, adapter, init_adapter, path, layers, spec["cayley_scale"] if cayley_scale == "linear" else \
        cayley_scale, alpha


@cli.command()
@base_options
@path_options(multiple=True)
@click.option("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS), show_default=True,
              help="Comma list of alphas per path (0 and 1 are always evaluated).")
@click.option("--target", multiple=True, default=["math-offline"], show_default=True,
              help="Target suite(s): math-offline, med-offline, math, med, or any lm-eval task name.")
@click.option("--general", multiple=True, default=["general-offline"], show_default=True,
              help="General suite(s): general-offline, general, or any lm-eval task name.")
@click.option("--limit", type=int, default=None, help="At most N items per task and split (quick runs).")
@click.option("--checkpoints", default=None, help="Glob of a training run's checkpoint dirs: one more path, 'train'.")
@click.option("--select", "rule", type=click.Choice(["max-target-within", "knee", "max-sum", "weighted"]),
              default="max-target-within", show_default=True, help="How to pick the point (on validation scores).")
@click.option("--tolerance", type=float, default=1.0, show_default=True,
              help="max-target-within: general may drop this many points below the base.")
@click.option("--weight", type=float, default=0.5, show_default=True, help="weighted: weight of the target score.")
@click.option("--out", type=click.Path(), default=DEFAULT_SWEEP, show_default=True, help="Sweep dir.")
@click.option("--device", default=None, help="cuda or cpu (default: cuda when present).")
@click.option("--dtype", type=click.Choice(["bf16", "fp32", "fp16"]), default="bf16", show_default=True)
@click.option("--batch-size", default=None, help="lm-eval batch size (default: auto on GPU, 8 on CPU).")
def sweep(base, adapter, init_adapter, path, layers, cayley_scale, allow_extrapolation, alphas, target, general,
          limit, checkpoints, rule, tolerance, weight, out, device, dtype, batch_size):
    """Evaluate target and general scores along paths; print the table, write results, pick the best point."""
    from . import sweep as sweeper

    if adapter is None:
        raise RewindError("--adapter is required")
    paths = list(path)
    if "layerwise" in paths:
        if layers is None:
            raise RewindError("--path layerwise needs --layers ramp|balanced|a,b,...")
        paths = ["auto" if p == "layerwise" else p for p in paths]
    spec = sweeper.SweepSpec(
        adapter=adapter, base=base, paths=paths, alphas=_floats(alphas, "--alphas"), target=list(target),
        general=list(general), limit=limit, layers=layers, cayley_scale=cayley_scale, init_adapter=init_adapter,
        checkpoints=checkpoints, select=rule, tolerance=tolerance, weight=weight, dtype=dtype, device=device,
        batch_size=int(batch_size) if batch_size and batch_size.isdigit() else batch_size,
        allow_extrapolation=allow_extrapolation)
    summary = sweeper.Sweep(spec, out).run()
    if summary:
        click.echo(sweeper.table(summary))
        click.echo(f"wrote {out}/results.jsonl, summary.json, pareto.png")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RewindError(f"{flag} {text!r}: give comma-separated numbers") from None


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(), required=True, help="Run dir: adapter, checkpoints, recipe.yaml, log.")
@click.option("--print-recipe", is_flag=True, help="Print the resolved recipe and stop.")
def train(recipe, overrides, out, print_recipe):
    """Train RECIPE (a YAML file or a shipped name like sft/oft) with key=value OVERRIDES.

    \b
    rewind train recipes/sft/oft.yaml --out runs/oft
    rewind train sft/lora trainer.max_steps=100 peft.r=16 --out runs/lora16
    rewind train grpo/oft base=qwen --out runs/oft-grpo --print-recipe
    """
    from . import train as training

    if print_recipe:
        click.echo(training.load_recipe(recipe, list(overrides)).to_yaml())
        return
    click.echo(f"wrote {training.train(recipe, list(overrides), out)}")


@cli.command()
@click.option("--base", default=None, help="Alias, hub id or dir (only its config is read). Default: smollm2.")
def recipes(base):
    """List the shipped recipes with their exact trainable-parameter counts on BASE (budget matching)."""
    from . import train as training

    click.echo(training.format_table(training.budget_table(base or "smollm2")))


@cli.command()
@base_options
def inspect(base, adapter, init_adapter):
    """Show what an adapter is: method, natural path, updated tensors, update size per layer."""
    from . import adapters, engine, export as exporter, models

    if adapter is None:
        raise RewindError("--adapter is required")
    tensors = exporter.BaseTensors(exporter.base_shards(models.local_dir(base)))
    update = adapters.read(adapter, tensors.shapes, init_adapter, base_tensor=tensors)
    click.echo(f"adapter   {update.source}\nmethod    {update.method.name} ({update.method.summary})\n"
               f"path      {update.natural_path} (natural)\ntensors   {len(update.deltas)} updated\n"
               f"sha256    {update.sha256}")
    strengths = engine.layer_strengths(update, tensors)
    unit = "||Q||" if update.natural_path == "cayley" else "||dW||/||W0||"
    click.echo(f"per-layer update size ({unit}):")
    for layer, value in sorted(strengths.items()):
        click.echo(f"  layer {layer:3d}  {value:.4g}")


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="rewind", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("rewind: aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RewindError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"rewind: error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line unless --debug
        if debug:
            raise
        click.echo(f"rewind: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # --help and --version return their exit code


if __name__ == "__main__":
    main()
