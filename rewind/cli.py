"""`rewind` command line: each command is a thin call into the library."""

from __future__ import annotations

import os
import sys
import traceback

import click

from . import __version__
from .errors import RewindError

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
    ctx.obj = {"debug": debug}


def base_options(f):
    f = click.option("--init-adapter", type=click.Path(), default=None,
                     help="Step-0 adapter of a residual-init LoRA (PiSSA/OLoRA saved unconverted).")(f)
    f = click.option("--adapter", type=click.Path(), default=None, help="peft adapter dir or full checkpoint dir.")(f)
    f = click.option("--base", default=None,
                     help="Alias (smollm2 [default], qwen, llama), hub id or local model dir.")(f)
    return f


def path_options(f):
    f = click.option("--allow-extrapolation", is_flag=True, help="Allow alpha outside [0, 1].")(f)
    f = click.option("--cayley-scale", type=click.Choice(["linear", "sqrt"]), default="linear", show_default=True,
                     help="cayley path: generator scale s(alpha) = alpha or sqrt(alpha).")(f)
    f = click.option("--layers", "layers", default=None,
                     help="Per-layer alphas: ramp, balanced, a comma list (one per layer) or a JSON file.")(f)
    f = click.option("--path", "path", type=click.Choice(_PATH_CHOICES), default="auto", show_default=True,
                     help="auto = the method's natural path (OFT: cayley, others: linear).")(f)
    return f


def _path_and_schedule(path: str, layers: str | None):
    from .paths import Schedule

    if path == "layerwise":
        if layers is None:
            raise RewindError("--path layerwise needs --layers ramp|balanced|a,b,...")
        path = "auto"
    return path, Schedule.parse(layers)


@cli.command()
@base_options
@path_options
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Point on the path: 0 = base, 1 = finetune.")
@click.option("--out", type=click.Path(), required=True, help="Output dir (must be empty or absent).")
@click.option("--format", "fmt", type=click.Choice(["merged", "adapter"]), default="merged", show_default=True,
              help="merged: HF checkpoint; adapter: a peft adapter scaled along its natural path (where exact).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--dry-run", is_flag=True, help="Check inputs and print the plan; write nothing.")
@click.option("--device", default="cpu", show_default=True, help="Where tensors are computed while streaming.")
def export(base, adapter, init_adapter, path, layers, cayley_scale, allow_extrapolation, alpha, out, fmt, force,
           dry_run, device):
    """Write the model at one point of a path: merged checkpoint or peft adapter."""
    from . import export as exporter

    if adapter is None:
        raise RewindError("--adapter is required")
    path, schedule = _path_and_schedule(path, layers)
    plan = exporter.plan(base, adapter, out, alpha, path, schedule, fmt, force, init_adapter, cayley_scale,
                         allow_extrapolation)
    click.echo(plan.summary())
    if dry_run:
        return
    exporter.write(plan, device)
    click.echo(f"wrote {out}")


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
        cli.main(args=argv, prog_name="rewind", standalone_mode=False)
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


if __name__ == "__main__":
    main()
