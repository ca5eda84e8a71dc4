"""A quiet terminal: a sweep shows one rewind bar (points x tasks, the current point), lm-eval's bars and library
warnings only with -v; the table stays on stdout, notes and errors stay one line each."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest
import tinysweep

from rewind import progress
from rewind.cli import main


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as code:
        main(args)
    return code.value.code


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tinysweep.make(tmp_path_factory.mktemp("progress"))


def _sweep(tiny, out, *flags) -> list[str]:
    base, adapter = tiny
    return [*flags, *tinysweep.sweep_args(base, adapter, out, "--alphas", "0,1")]


def test_a_sweep_shows_one_rewind_bar_and_no_library_bars(tiny, tmp_path, capsys):
    assert _cli(_sweep(tiny, tmp_path / "quiet")) == 0
    out, err = capsys.readouterr()
    frames = [f.strip() for f in err.replace("\r", "\n").splitlines() if f.strip()]
    assert frames and all(f.startswith("sweep:") for f in frames), frames[:5]
    # base and final on validation, then on test (the selection is one of them): 4 points x 2 tasks
    assert "8/8 " in frames[-1] and "task" in frames[-1]
    assert any("base@0 validation" in f for f in frames) and any("final@1 test" in f for f in frames)
    assert "selected (max-target-within, validation)" in out and "wrote " in out


def test_a_grid_group_shows_on_the_bar_by_its_ends(tiny, tmp_path, capsys):
    base, adapter = tiny
    assert _cli(tinysweep.sweep_args(base, adapter, tmp_path / "grid", "--alphas", "0,1", "--batch-points", "2")) == 0
    frames = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("base@0..final@1 (grid of 2) validation" in f for f in frames)


def test_verbose_shows_the_libraries_bars(tiny, tmp_path, capsys):
    assert _cli(_sweep(tiny, tmp_path / "loud", "-v")) == 0
    err = capsys.readouterr().err
    assert "Running loglikelihood requests" in err and "Running generate_until requests" in err
    assert "sweep:" in err


def test_an_error_inside_a_quiet_command_is_one_line(tiny, tmp_path, capsys):
    base, _ = tiny
    args = tinysweep.sweep_args(base, tmp_path / "absent", tmp_path / "out")
    assert _cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rewind: error: ") and err.count("\n") == 1


def test_quiet_hides_library_output_but_not_rewinds(capsys):
    with progress.quiet():
        print("a library bar", file=sys.stderr)
        warnings.warn("a library warning", UserWarning, stacklevel=1)
        logging.getLogger("lm_eval.api.task").warning("a library log line")
        progress.note("rewind: note: kept")
        with progress.Bar(total=2, desc="outer") as outer:
            inner = progress.Bar(total=3, desc="inner")
            assert not outer.disable and inner.disable  # one bar per job: the outermost
            inner.close()
    err = capsys.readouterr().err
    assert "rewind: note: kept" in err and "outer" in err
    assert "library" not in err and "inner" not in err
    assert logging.getLogger("lm_eval").level == logging.NOTSET  # levels come back


def test_verbose_changes_nothing(capsys):
    with progress.quiet(verbose=True):
        print("a library bar", file=sys.stderr)
    assert "a library bar" in capsys.readouterr().err
