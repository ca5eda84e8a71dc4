"""What the terminal shows while rewind works: one rewind progress bar per job, the libraries' own bars and warnings
hidden unless asked for (`rewind -v`).

`quiet()` is what the CLI runs sweep, search, diagnose and arena in: lm-eval's request bars, transformers' loading
bars and every library warning go to os.devnull, while rewind's own bars (`Bar`) and notes (`note`) keep writing
to the terminal. A bar opened while another is open stays hidden, so a job shows one bar, the outermost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from tqdm.auto import tqdm

_terminal = None  # the stderr that quiet() replaced: where rewind's own output still goes
_open: list[tqdm] = []  # rewind's visible bars, outermost first
# Loggers whose warnings are their libraries' business; errors still reach a handler (and rewind reports the
# exception that follows, in one line).
LIBRARIES = ("lm_eval", "transformers", "datasets", "huggingface_hub", "accelerate", "peft", "torch")


def terminal():
    """Where rewind's bars and notes write: the real stderr, also inside quiet()."""
    return _terminal or sys.stderr


@contextlib.contextmanager
def quiet(verbose: bool = False):
    """Hide the libraries' progress bars and warnings for the block (nothing changes with `verbose`)."""
    global _terminal
    if verbose or _terminal is not None:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in LIBRARIES}
    with open(os.devnull, "w") as null, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in LIBRARIES:
            logging.getLogger(name).setLevel(logging.ERROR)
        _terminal = sys.stderr
        try:
            with contextlib.redirect_stderr(null):
                yield
        finally:
            _terminal = None
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def note(text: str) -> None:
    """One line on the terminal that does not tear a bar."""
    tqdm.write(text, file=terminal())


class Bar(tqdm):
    """A rewind progress bar on the terminal; hidden when another rewind bar is already open (the outer one shows
    the job)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("file", terminal())
        kwargs["disable"] = kwargs.get("disable", False) or bool(_open)
        super().__init__(*args, **kwargs)
        if not self.disable:
            _open.append(self)

    def close(self) -> None:
        if self in _open:
            _open.remove(self)
        super().close()


class Work(Bar):
    """One bar over a job's units of work (a sweep's points x tasks): `cover` grows the total as work is planned,
    `at` names the current point, `finish` closes it at what was done."""

    def __init__(self, desc: str, total: int, unit: str = "task", disable: bool = False):
        super().__init__(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)

    def cover(self, units: int) -> None:
        """Make room for `units` more (no more than what is not covered yet)."""
        if self.n + units > self.total:
            self.total = self.n + units
            self.refresh()

    def at(self, text: str) -> None:
        self.set_postfix_str(text, refresh=True)

    def finish(self) -> None:
        self.total = self.n
        self.set_postfix_str("", refresh=False)
        self.close()
