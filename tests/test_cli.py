"""The command line: --help everywhere, one-line errors with a non-zero exit, nothing half-written."""

from __future__ import annotations

import pytest
from tiny import make_adapter, tiny_base
from transformers import AutoModelForCausalLM

from rewind.cli import cli, main


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("argv", [(), *_commands(cli)])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "Usage: rewind" in capsys.readouterr().out


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    tiny_base().save_pretrained(d)
    return d


def _run(argv, capsys):
    capsys.readouterr()  # drop what the test's own setup printed
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--alpha", "1.5"], "alpha 1.5 is outside [0, 1]"),
        (["--path", "cayley"], "path 'cayley' does not apply"),
        (["--path", "layerwise"], "--path layerwise needs --layers"),
        (["--layers", "0.1,0.2"], "has 2 alphas; the model has 3"),
    ],
)
def test_export_errors_are_one_line(extra, message, base_dir, tmp_path, capsys):
    make_adapter("lora", AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "a")
    code, out, err = _run(
        ["export", "--base", base_dir, "--adapter", tmp_path / "a", "--out", tmp_path / "o", *extra], capsys
    )
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rewind: error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_adapter_and_base(tmp_path, capsys):
    code, _, err = _run(["export", "--base", tmp_path, "--adapter", tmp_path / "nope", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "no config.json" in err
    code, _, err = _run(["inspect", "--base", tmp_path], capsys)
    assert code == 2 and "--adapter is required" in err


def test_export_and_inspect_work(base_dir, tmp_path, capsys):
    make_adapter("oft", AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "a")
    code, out, err = _run(
        [
            "export",
            "--base",
            base_dir,
            "--adapter",
            tmp_path / "a",
            "--out",
            tmp_path / "o",
            "--alpha",
            "0.5",
            "--dry-run",
        ],
        capsys,
    )
    assert code == 0 and "cayley(alpha=0.5)" in out and not (tmp_path / "o").exists()
    code, out, err = _run(
        [
            "export",
            "--base",
            base_dir,
            "--adapter",
            tmp_path / "a",
            "--out",
            tmp_path / "o",
            "--path",
            "layerwise",
            "--layers",
            "ramp",
            "--alpha",
            "0.5",
        ],
        capsys,
    )
    assert code == 0 and (tmp_path / "o" / "README.md").is_file()
    code, out, err = _run(["inspect", "--base", base_dir, "--adapter", tmp_path / "a"], capsys)
    assert code == 0 and "method    oft" in out and "layer   2" in out


def test_cuda_without_gpu_is_a_clear_error(base_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from rewind import models
    from rewind.errors import RewindError

    with pytest.raises(RewindError, match="no CUDA GPU"):
        models.pick_device("cuda")


def test_export_from_a_sweep_keeps_its_cayley_scale_unless_given(base_dir, tmp_path, capsys):
    import json

    make_adapter("oft", AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "a")
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    spec = {
        "base": str(base_dir),
        "adapter": str(tmp_path / "a"),
        "init_adapter": None,
        "layers": None,
        "cayley_scale": "sqrt",
    }
    (sweep_dir / "sweep.json").write_text(json.dumps({"run": "x", "spec": spec, "paths": ["cayley"]}))
    argv = ["export", "--from", sweep_dir, "--alpha", "0.5", "--out", tmp_path / "o", "--dry-run"]
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "cayley(alpha=0.5, scale=sqrt)" in out  # the sweep's scale
    code, out, _ = _run([*argv, "--cayley-scale", "linear"], capsys)
    assert code == 0 and "cayley(alpha=0.5) " in out  # an explicit flag wins, even when it names the default
