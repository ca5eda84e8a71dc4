"""`rewind` command line: each command is a thin call into the library."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import traceback
import warnings

import click
from click.core import ParameterSource

from . import __version__, methods, paths, progress
from .errors import RewindError
from .evaluate.harness import CHAT_TEMPLATE_MODES
from .pareto import RULES, SCALAR_RULES
from .schedule import LAYERWISE
from .session import DEFAULT_ALPHAS
from .sweep import DEFAULT_OUT as DEFAULT_SWEEP

_PATH_CHOICES = [paths.AUTO, *paths.kinds(), LAYERWISE]
_NATURAL_PATHS = ", ".join(
    f"{m.name}: {m.natural_path}" for m in methods.METHODS.values() if m.natural_path != methods.LINEAR
)


def _offline_defaults(online: bool) -> None:
    # Offline unless asked: without these, TRL, huggingface_hub and datasets each try a network call per load.
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Finite(click.FloatRange):
    """A float option that must be a finite number (click's FLOAT takes nan and inf), optionally in a range."""

    name = "float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:  # click would show "x<=None" for an unbounded one
        return super()._describe_range() if (self.min, self.max) != (None, None) else ""


class _Notes(logging.Handler):
    """The library's notes (logger "rewind", INFO and up) as one `rewind: note: ...` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        progress.note(f"rewind: note: {record.getMessage()}")  # on the terminal, also while quiet() hides stderr


def _show_notes() -> None:
    logger = logging.getLogger("rewind")
    if not any(isinstance(h, _Notes) for h in logger.handlers):
        logger.addHandler(_Notes())
        logger.setLevel(logging.INFO)
        logger.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rewind")
@click.option(
    "--online",
    is_flag=True,
    envvar="REWIND_ONLINE",
    help="Allow hub downloads (models, hub tasks). Default: offline, local files and HF cache only.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    envvar="REWIND_VERBOSE",
    help="Also show lm-eval's and transformers' own progress bars and warnings (hidden by default: one rewind "
    "bar per job), and where an export's time went.",
)
@click.pass_context
def cli(ctx, online, debug, verbose):
    """Rewind PEFT finetunes along parameterization-aware paths, evaluate, and export the best point."""
    _offline_defaults(online)
    _show_notes()
    if not debug:  # libraries' deprecation chatter is not the user's problem
        warnings.simplefilter("ignore", FutureWarning)
    ctx.obj = {"debug": debug, "verbose": verbose}


def quietly(command):
    """Run `command` with the libraries' bars and warnings hidden (progress.quiet), unless `rewind -v`."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with progress.quiet(click.get_current_context().find_root().obj["verbose"]):
            return command(*args, **kwargs)

    return run


def base_options(f):
    f = click.option(
        "--init-adapter",
        type=click.Path(),
        default=None,
        help="Step-0 adapter of a residual-init LoRA (PiSSA/OLoRA/CorDA/LoRA-GA saved unconverted).",
    )(f)
    f = click.option("--adapter", type=click.Path(), default=None, help="peft adapter dir or full checkpoint dir.")(f)
    f = click.option("--base", default=None, help="Alias (smollm2 [default], qwen, llama), hub id or local model dir.")(
        f
    )
    return f


def path_options(multiple: bool = False):
    def decorate(f):
        f = click.option("--allow-extrapolation", is_flag=True, help="Allow alpha outside [0, 1].")(f)
        f = click.option(
            "--cayley-scale",
            type=click.Choice(["linear", "sqrt"]),
            default="linear",
            show_default=True,
            help="cayley path: generator scale s(alpha) = alpha or sqrt(alpha).",
        )(f)
        f = click.option(
            "--layers",
            "layers",
            default=None,
            help="Per-layer alphas: ramp, balanced, a comma list (one per layer) or a JSON file.",
        )(f)
        more = " Repeat to sweep several paths on one resident model." if multiple else ""
        f = click.option(
            "--path",
            "path",
            type=click.Choice(_PATH_CHOICES),
            multiple=multiple,
            default=("auto",) if multiple else "auto",
            show_default=True,
            help=f"auto = the method's natural path ({_NATURAL_PATHS}, others: linear).{more}",
        )(f)
        return f

    return decorate


def _finetune(base, adapter, init_adapter, path, layers, cayley_scale, allow_extrapolation, alpha, **_):
    """The point that base_options, path_options and --alpha name (a command's other options are not its)."""
    from .checkpoint import Finetune
    from .schedule import Schedule, path_names

    if adapter is None:
        raise RewindError("--adapter is required")
    [path] = path_names([path], layers)
    return Finetune(
        adapter=adapter,
        base=base,
        alpha=alpha,
        path=path,
        schedule=Schedule.parse(layers),
        cayley_scale=cayley_scale,
        init_adapter=init_adapter,
        allow_extrapolation=allow_extrapolation,
    )


@cli.command()
@base_options
@path_options()
@click.option(
    "--alpha",
    type=float,
    default=None,
    help="Point on the path: 0 = base, 1 = finetune. Default: the last sweep's selected point, else 1.",
)
@click.option(
    "--out",
    type=click.Path(),
    required=True,
    help="Output dir (must be empty or absent; never an input, nor inside or around one).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["merged", "adapter"]),
    default="merged",
    show_default=True,
    help="merged: HF checkpoint; adapter: a peft adapter scaled along its natural path (where exact).",
)
@click.option(
    "--from",
    "sweep_dir",
    type=click.Path(),
    default=None,
    help="Sweep dir to take base, adapter and point from (default ./rewind-sweep when --adapter is absent).",
)
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--dry-run", is_flag=True, help="Check inputs and print the plan; write nothing.")
@click.option("--device", default="cpu", show_default=True, help="Where tensors are computed while streaming.")
@click.option(
    "--verify",
    is_flag=True,
    help="Reload what was written and compare its logits with the in-memory model before publishing it.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
    default="auto",
    show_default=True,
    help="Dtype written: merged in fp32, rounded once. auto: the base's (merged), the adapter's (adapter).",
)
def export(
    base,
    adapter,
    init_adapter,
    path,
    layers,
    cayley_scale,
    allow_extrapolation,
    alpha,
    out,
    fmt,
    sweep_dir,
    force,
    dry_run,
    device,
    verify,
    dtype,
):
    """Write the model at one point of a path: merged checkpoint or peft adapter.

    With no --adapter, exports from the last sweep: its selected Pareto-best point, or --alpha on its path.
    """
    _huge_pages()
    from . import export as exporter
    from . import models

    picked = models.pick_device(device)  # an unusable --device fails before the plan is printed
    if fmt == exporter.MERGED and not dry_run:
        exporter.start_device(picked)  # while the plan reads the adapter
    if adapter is None or sweep_dir is not None:
        sweep_dir = sweep_dir or DEFAULT_SWEEP
        given = click.get_current_context().get_parameter_source("cayley_scale") is not ParameterSource.DEFAULT
        base, adapter, init_adapter, path, layers, cayley_scale, alpha = _from_sweep(
            sweep_dir, base, path, layers, cayley_scale if given else None, alpha
        )
    alpha = 1.0 if alpha is None else alpha
    point = _finetune(base, adapter, init_adapter, path, layers, cayley_scale, allow_extrapolation, alpha)
    plan = exporter.plan(exporter.ExportSpec.at(point, out=out, fmt=fmt, force=force, dtype=dtype, sweep_dir=sweep_dir))
    click.echo(plan.summary())
    if dry_run:
        return
    exporter.write(plan, device, verify=verify)
    if click.get_current_context().find_root().obj["verbose"]:  # where the time went, for benchmarks
        click.echo(f"export profile: {json.dumps(plan.profile)}")
    if plan.verified is not None:
        click.echo(f"verified: max |logit diff| vs the in-memory model {plan.verified:.3g}")
    click.echo(f"wrote {out}")


def _huge_pages() -> None:
    """torch's CPU tensors of 2 MB and more on transparent huge pages (THP_MEM_ALLOC_ENABLE, read at the process's
    first CPU allocation, which nothing before this makes): an export fills fresh buffers of up to a tensor's size,
    and glibc maps each one over 32 MB afresh, faulted in 4 KB at a time as it is filled: a 136 MB copy ran at
    0.8-1.4 GB/s into 4 KB pages and 4-8.6 GB/s into 2 MB ones on a 2-core VM. A kernel without THP ignores it."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _from_sweep(sweep_dir, base, path, layers, cayley_scale, alpha):
    """Fill export's arguments from a sweep dir; explicit flags win (`cayley_scale` None: not given)."""
    from . import sweep
    from .results import Point

    record, summary = sweep.load(sweep_dir)
    spec = record["spec"]
    base = base if base is not None else spec["base"]
    layers = layers if layers is not None else spec["layers"]
    adapter, init_adapter = spec["adapter"], spec["init_adapter"]
    if alpha is None:
        if summary is None:
            raise RewindError(f"the sweep in {sweep_dir} has no selection yet (no summary.json): pass --alpha")
        chosen = Point.of(summary["selected"])
        if chosen.kind == "train":
            raise RewindError(
                "the sweep selected a training checkpoint: export it with --adapter "
                f"<checkpoint-{chosen.step}> --alpha 1"
            )
        alpha = chosen.alpha
        if chosen.kind in ("path", "searched"):
            path = chosen.path
        if chosen.layers:  # a schedule found by `rewind search`
            layers = ",".join(f"{v:g}" for v in chosen.layers)
    if path == "auto":
        path = record["paths"][0]
    return base, adapter, init_adapter, path, layers, cayley_scale or spec["cayley_scale"], alpha


INCLUDE_PATH = click.option(
    "--include-path",
    "include_path",
    multiple=True,
    type=click.Path(),
    help="Dir of lm-eval task YAMLs, searched before lm-eval's own tasks (lm-eval's --include_path). Repeatable.",
)


def _batch_size(ctx, param, text):
    if text is None or text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise click.BadParameter(f"{text!r}: give a positive number or auto", ctx, param)
    return int(text)


# What defines a sweep's points and scores; shared by `sweep` and `search` (which sweeps first).
_SWEEP_OPTIONS = [
    click.option(
        "--alphas",
        default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
        show_default=True,
        help="Comma list of alphas per path (0 and 1 are always evaluated).",
    ),
    click.option(
        "--target",
        multiple=True,
        default=["math-offline"],
        show_default=True,
        help="Target suite(s): math-offline, med-offline, code-offline, math, med, any lm-eval task "
        "name, or a task YAML file.",
    ),
    click.option(
        "--general",
        multiple=True,
        default=["general-offline"],
        show_default=True,
        help="General suite(s): general-offline, general, any lm-eval task name, or a task YAML file.",
    ),
    INCLUDE_PATH,
    click.option(
        "--metric",
        "metrics",
        multiple=True,
        metavar="TASK=METRIC",
        help="Score TASK (or every task of a suite) by lm-eval METRIC (e.g. acc_norm, or "
        "exact_match,flexible-extract). Default: the task's metadata primary_metric, else its "
        "first higher-is-better metric. Repeatable.",
    ),
    click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=None,
        help="At most N items per task and split (quick runs).",
    ),
    click.option(
        "--checkpoints", default=None, help="Glob of a training run's checkpoint dirs: one more path, 'train'."
    ),
    click.option(
        "--pass-k",
        default=None,
        help="e.g. 1,8: sampled pass@k (temperature 0.7) beside greedy accuracy on generation tasks.",
    ),
    click.option(
        "--tolerance",
        type=_Finite(),
        default=1.0,
        show_default=True,
        help="max-target-within: general may drop this many points below the base.",
    ),
    click.option(
        "--weight",
        type=_Finite(0, 1),
        default=0.5,
        show_default=True,
        help="weighted: weight of the target score.",
    ),
    click.option(
        "--confidence",
        type=_Finite(0, 1, min_open=True, max_open=True),
        default=0.9,
        show_default=True,
        help="Of the paired bootstrap intervals the table shows and the selection decides on.",
    ),
    click.option("--out", type=click.Path(), default=DEFAULT_SWEEP, show_default=True, help="Sweep dir."),
    click.option("--device", default=None, help="cuda or cpu (default: cuda when present)."),
    click.option(
        "--dtype",
        type=click.Choice(["auto", "bf16", "fp32", "fp16"]),
        default="auto",
        show_default=True,
        help="auto: bf16 on a GPU, fp32 on a CPU.",
    ),
    click.option(
        "--batch-size",
        callback=_batch_size,
        default=None,
        help="lm-eval batch size: a number or auto (default: auto on GPU, 8 on CPU).",
    ),
    click.option(
        "--batch-points",
        default="auto",
        show_default=True,
        help="Points evaluated in one batched pass per request kind, all tasks together, each row at its point "
        "(grid mode): of all paths "
        "where a weight copy per point fits in a quarter of free memory, else of one path; 1: point by point. "
        "auto: all the points, on the tasks where it pays (generation; loglikelihood only on a GPU and a model "
        "of at most 1B parameters).",
    ),
    click.option(
        "--chat-template",
        type=click.Choice(CHAT_TEMPLATE_MODES),
        default="auto",
        show_default=True,
        help="Chat-format the prompts of tasks that ask for it. auto: when the base's tokenizer has a "
        "chat template (a plain pretrained base has none: plain prompts, with a note).",
    ),
]


def sweep_options(f):
    for option in reversed(_SWEEP_OPTIONS):
        f = option(f)
    return f


def _sweep_spec(adapter, path, layers, alphas, target, general, include_path, metrics, pass_k, rule, **fields):
    """The SweepSpec that `sweep` and `search` options give; `fields`: the options named as SweepSpec's fields."""
    from .schedule import path_names
    from .session import SweepSpec

    if adapter is None:
        raise RewindError("--adapter is required")
    return SweepSpec(
        adapter=adapter,
        paths=path_names(path, layers),
        layers=layers,
        alphas=_floats(alphas, "--alphas"),
        target=list(target),
        general=list(general),
        include_path=list(include_path),
        metric=_metrics(metrics),
        pass_k=_counts(pass_k or "", "--pass-k"),
        select=rule,
        **fields,
    )


def _continued_spec(out, rule, tolerance, weight, confidence, device, batch_size, batch_points):
    """The SweepSpec of the sweep in `out`, with the rule and where to run it as given now."""
    from .session import SweepSpec
    from .sweep import load

    record, _ = load(out)
    spec = SweepSpec(**record["spec"])
    spec.select, spec.tolerance, spec.weight, spec.device = rule, tolerance, weight, device or spec.device
    spec.batch_size, spec.batch_points = batch_size or spec.batch_size, batch_points
    spec.confidence = confidence
    return spec


def _metrics(values) -> dict[str, str]:
    out = {}
    for value in values:
        task, sep, metric = value.partition("=")
        if not (sep and task.strip() and metric.strip()):
            raise RewindError(f"--metric {value}: give TASK=METRIC (e.g. my_task=acc_norm)")
        out[task.strip()] = metric.strip()
    return out


def rule_option(flag: str, rules, help: str):
    """The selection rule (the sweep's --select, the search's --objective), as `rule`."""
    return click.option(
        flag, "rule", type=click.Choice(rules), default="max-target-within", show_default=True, help=help
    )


@cli.command()
@base_options
@path_options(multiple=True)
@sweep_options
@rule_option("--select", RULES, "How to pick the point (on validation scores).")
@click.option(
    "--race",
    is_flag=True,
    help="Race the points over chunks of validation items, dropping those another confidently dominates.",
)
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=None,
    help="--race: item evaluations at most (points x items; default: until the items run out).",
)
@click.option("--chunk", type=click.IntRange(min=1), default=32, show_default=True, help="--race: items per round.")
@quietly
def sweep(out, **options):
    """Evaluate target and general scores along paths; print the table, write results, pick the best point."""
    from . import sweep as sweeper
    from .report import table

    if options["budget"] is not None and not options["race"]:
        raise RewindError("--budget ITEMS is the budget of a race: pass --race too")
    spec = _sweep_spec(**options)
    summary = sweeper.Sweep(spec, out).run()
    if summary:
        click.echo(table(summary))
        click.echo(f"wrote {out}/results.jsonl, summary.json, pareto.png, report.html")


@cli.command()
@base_options
@path_options(multiple=True)
@sweep_options
@rule_option(
    "--objective",
    SCALAR_RULES,
    "What the search maximises on validation (the sweep's selection rule; also picks the export).",
)
@click.option(
    "--groups",
    default="4",
    show_default=True,
    help="Contiguous layer groups with one alpha each: a number, or 'layer' for one per layer.",
)
@click.option(
    "--budget", type=click.IntRange(min=1), default=24, show_default=True, help="New validation evaluations at most."
)
@click.option(
    "--step", type=_Finite(0, 1, min_open=True), default=0.2, show_default=True, help="First alpha move of a group."
)
@click.option(
    "--min-step",
    type=_Finite(0, 1, min_open=True),
    default=0.05,
    show_default=True,
    help="Smallest move; alphas lie on its grid.",
)
@quietly
def search(out, groups, budget, step, min_step, **options):
    """Search per-layer-group alphas on validation, starting from the sweep's best uniform alpha.

    \b
    With --adapter: sweeps first (or resumes that sweep in --out), then searches.
    Without: continues the sweep already in --out (its base, adapter, suites and limit).
    --path picks the path searched (default the sweep's first). Candidates join the sweep's results.jsonl,
    table and pareto.png; `rewind export --from OUT` then writes the selected point.
    Each round moves every group's alpha one --step down and up from the best point so far and evaluates
    those candidates together (one grid pass where --batch-points grids); the best one confidently
    better (paired, jointly over the round) is kept, else the step halves, down to --min-step.
    """
    from . import search as searcher
    from .report import table
    from .session import Session

    if options["adapter"] is not None:
        spec = _sweep_spec(**options)
    else:
        keep = ("rule", "tolerance", "weight", "confidence", "device", "batch_size", "batch_points")
        spec = _continued_spec(out, **{key: options[key] for key in keep})
    search_path = next((p for p in options["path"] if p not in (paths.AUTO, LAYERWISE)), None)  # a path named
    plan = searcher.SearchSpec(path=search_path, groups=groups, budget=budget, step=step, min_step=min_step)
    summary, found = searcher.Search(Session(spec, out), plan).run()
    if summary:
        click.echo(table(summary))
        click.echo()
        click.echo(searcher.report_table(found))
        click.echo(
            f"wrote {out}/search.json; results.jsonl, summary.json, pareto.png and report.html include the search"
        )


@cli.command()
@click.argument("sweep_dir", metavar="[SWEEPDIR]", required=False, default=DEFAULT_SWEEP, type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="HTML file to write (default: SWEEPDIR/report.html).")
@click.option(
    "--attach",
    multiple=True,
    type=click.Path(),
    help="A diagnostics or arena dir whose plots join the page (those in SWEEPDIR or a dir just under it "
    "join by themselves). Repeatable.",
)
def report(sweep_dir, out, attach):
    """One self-contained HTML page of a finished sweep (or search): frontier, scores against alpha, per-task
    table, the selection and its export command. Opens offline; `rewind sweep` and `search` write it too."""
    from . import report_html as reporter

    click.echo(f"wrote {reporter.write(sweep_dir, out, list(attach))}")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RewindError(f"{flag} {text!r}: give comma-separated numbers") from None


def _counts(text: str, flag: str) -> list[int]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not all(v.isdigit() and int(v) >= 1 for v in values):
        raise RewindError(f"{flag} {text!r}: give comma-separated whole numbers, each at least 1")
    return [int(v) for v in values]


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Run dir: adapter, checkpoints, recipe.yaml, log (required unless --print-recipe).",
)
@click.option("--print-recipe", is_flag=True, help="Print the resolved recipe and stop.")
def train(recipe, overrides, out, print_recipe):
    """Train RECIPE (a YAML file or a shipped name like sft/oft) with key=value OVERRIDES.

    \b
    rewind train recipes/sft/oft.yaml --out runs/oft
    rewind train sft/lora trainer.max_steps=100 peft.r=16 --out runs/lora16
    rewind train grpo/oft base=qwen --print-recipe
    """
    from . import train as training

    if print_recipe:
        click.echo(training.load_recipe(recipe, list(overrides)).to_yaml())
        return
    if out is None:
        raise click.UsageError("Missing option '--out' (required unless --print-recipe).")
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
    from . import adapters, engine, models
    from .checkpoint import BaseTensors

    if adapter is None:
        raise RewindError("--adapter is required")
    tensors = BaseTensors(models.local_dir(base))
    update = adapters.read(adapter, tensors, init_adapter)
    click.echo(
        f"adapter   {update.source}\nmethod    {update.method.name} ({update.method.summary})\n"
        f"path      {update.natural_path} (natural)\ntensors   {len(update.deltas)} updated\n"
        f"sha256    {update.sha256}"
    )
    strengths = engine.layer_strengths(update, tensors)
    unit = "||Q||" if update.natural_path == "cayley" else "||dW||/||W0||"
    click.echo(f"per-layer update size ({unit}):")
    for layer, value in sorted(strengths.items()):
        click.echo(f"  layer {layer:3d}  {value:.4g}")


@cli.group()
def diagnose():
    """Why a finetune forgets: spectral profiles, capability-conditioned drift, activation geometry.

    Each compares the base (alpha = 0) with one point of a path (default: alpha 1 on the natural path) and writes
    JSON and PNGs to --out. Definitions: docs/diagnostics.md.
    """


def _diagnose_options(f):
    f = click.option("--device", default=None, help="cuda or cpu (default: cuda when present).")(f)
    f = click.option("--out", type=click.Path(), required=True, help="Report dir (JSON + PNG), created if absent.")(f)
    f = click.option(
        "--modules", default=None, help="Comma list of module types (q,k,v,o,gate,up,down) or full module names."
    )(f)
    f = click.option(
        "--alpha",
        type=float,
        default=1.0,
        show_default=True,
        help="The point compared with the base: 0 = base, 1 = finetune.",
    )(f)
    return f


def _probe_options(f):
    f = INCLUDE_PATH(f)
    f = click.option(
        "--dtype",
        type=click.Choice(["auto", "bf16", "fp32", "fp16"]),
        default="auto",
        show_default=True,
        help="auto: bf16 on a GPU, fp32 on a CPU.",
    )(f)
    f = click.option(
        "--max-length", type=click.IntRange(min=1), default=512, show_default=True, help="Tokens per item."
    )(f)
    f = click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)(f)
    f = click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=32,
        show_default=True,
        help="Items per data set, round-robin over the suite's tasks.",
    )(f)
    f = click.option("--split", type=click.Choice(["validation", "test"]), default="validation", show_default=True)(f)
    f = click.option(
        "--target",
        default="math-offline",
        show_default=True,
        help="Suite or task behind --data target (as sweep's --target).",
    )(f)
    f = click.option(
        "--data",
        type=click.Choice(["general", "target"]),
        multiple=True,
        default=("general", "target"),
        show_default=True,
        help="Probe data: general-offline and/or the --target suite. Repeatable.",
    )(f)
    return f


def _probe(data, target, split, limit, batch_size, max_length, include_path, **_):
    """The probe that _probe_options name (a command's other options are not its)."""
    from .diagnostics import Probe

    return Probe(tuple(data), target, split, limit, batch_size, max_length, tuple(include_path))


def _wrote(out, report, json_name):
    return f"wrote {os.path.join(out, json_name)}" + "".join(f", {p}" for p in report["plots"])


@diagnose.command("spectral")
@base_options
@path_options()
@_diagnose_options
@quietly
def diagnose_spectral(modules, out, device, **options):
    """Per adapted matrix, in W0's singular basis: retention and adaptation profiles, effective rank of dW,
    fluctuation, spectrum shift, and for OFT singular-vector alignment."""
    from .diagnostics import spectral
    from .diagnostics.common import parse_modules

    report = spectral.run(_finetune(**options), out, parse_modules(modules), device)
    click.echo(f"{len(report['matrices'])} matrices at {report['point']}; {_wrote(out, report, spectral.JSON)}")


@diagnose.command("csd")
@base_options
@path_options()
@_diagnose_options
@_probe_options
@quietly
def diagnose_csd(modules, out, device, dtype, **options):
    """Capability-conditioned drift E||dW h||^2 (absolute, relative to E||W0 h||^2, per unit update and input),
    h the base model's inputs to each adapted module on general or target data."""
    from .diagnostics import csd
    from .diagnostics.common import parse_modules

    report = csd.run(_finetune(**options), out, _probe(**options), parse_modules(modules), device, dtype)
    click.echo(f"{len(report['modules'])} modules at {report['point']}; {_wrote(out, report, csd.JSON)}")


@diagnose.command("activations")
@base_options
@path_options()
@_diagnose_options
@_probe_options
@click.option(
    "--probe-layers",
    default=None,
    help="Comma list of layer indices for --modules types (default: 4 evenly spaced, first and last).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Tokens kept per module and data set.",
)
@quietly
def diagnose_activations(modules, out, device, dtype, probe_layers, max_tokens, **options):
    """Base vs finetuned module outputs on the same tokens: linear CKA, Procrustes residual, Gram distortion,
    cosine and norm drift (default modules: q,k,v,down at a few evenly spaced layers)."""
    from .diagnostics import activations
    from .diagnostics.common import parse_modules

    report = activations.run(
        _finetune(**options),
        out,
        _probe(**options),
        parse_modules(modules),
        activations.parse_layers(probe_layers),
        max_tokens,
        device=device,
        dtype=dtype,
    )
    click.echo(f"{len(report['probed'])} modules at {report['point']}; {_wrote(out, report, activations.JSON)}")


@cli.command()
@click.argument("adapter_dirs", metavar="[ADAPTERS]...", nargs=-1, type=click.Path())
@click.option("--base", default=None, help="Alias (smollm2 [default], qwen, llama), hub id or local model dir.")
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    type=click.Path(),
    help="A finished sweep dir per adapter, in the adapters' order (default: found by adapter path).",
)
@click.option(
    "--sweeps-root",
    type=click.Path(),
    default=".",
    show_default=True,
    help="Without --sweep: look for sweep dirs here and in each adapter's dir.",
)
@click.option(
    "--diagnostics",
    default="spectral,csd,activations",
    show_default=True,
    help="Comma list of diagnostics to run and correlate with forgetting (may be empty: scores only).",
)
@click.option(
    "--include",
    "includes",
    multiple=True,
    type=click.Path(),
    help="An earlier arena report (its --out dir or arena.json) whose rows join this one as recorded, "
    "before the ADAPTERS, without their adapters. Same --base and --diagnostics; with csd or "
    "activations, also the same --data, --target, --split, --limit, --max-length. A name already "
    "taken gets a -N suffix. Repeatable.",
)
@_probe_options
@click.option(
    "--out",
    type=click.Path(),
    required=True,
    help="Report dir: arena.md, arena.csv, correlations.csv, arena.json, arena.png, per-adapter diagnostics.",
)
@click.option("--device", default=None, help="cuda or cpu (default: cuda when present).")
@quietly
def arena(adapter_dirs, base, sweeps, sweeps_root, diagnostics, includes, out, device, dtype, **options):
    """Finetunes of one base side by side: method, trainable params, target and general scores from their sweeps,
    and the Pearson/Spearman correlation of each diagnostic with forgetting (the drop in general score).
    --include adds the rows of earlier arena reports, so one report can grow adapter by adapter."""
    from .diagnostics import arena as arena_

    report = arena_.run(
        list(adapter_dirs),
        base,
        out,
        list(sweeps) or None,
        sweeps_root,
        tuple(d.strip() for d in diagnostics.split(",") if d.strip()),
        _probe(**options),
        device,
        dtype,
        include=list(includes),
    )
    click.echo(arena_.markdown(report))
    click.echo(
        f"wrote {os.path.join(out, arena_.MARKDOWN)}, {arena_.TABLE}, {arena_.CORRELATIONS}, {arena_.JSON}"
        + "".join(f", {p}" for p in report["plots"])
    )


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="rewind", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("rewind: aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        where = (
            f"rewind {exc.ctx.command_path.split(' ', 1)[1]} --help"
            if getattr(exc, "ctx", None) and " " in exc.ctx.command_path
            else "rewind --help"
        )
        click.echo(f"rewind: error: {exc.format_message()} (see {where})", err=True)
        sys.exit(exc.exit_code)
    except RewindError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"rewind: error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # broad: the last line of defence: one line unless --debug
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(
            f"rewind: internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # --help and --version return their exit code


if __name__ == "__main__":
    main()
