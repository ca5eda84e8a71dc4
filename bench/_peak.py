"""Run a Python command and write its own peak RSS at exit: `python bench/_peak.py REPORT (-m MODULE | -c CODE |
SCRIPT) ARGS...`.

Why not the parent's ru_maxrss after wait: Linux carries a process's RSS high-water mark across exec, so a child
forked from a parent holding torch starts with the parent's RSS as its "peak". /proc/self/status VmHWM belongs to
the process's current address space (the one exec made), so it is this command's own peak, file-backed pages
(mmapped safetensors, shared libraries) included. Written to REPORT as JSON at interpreter exit (sys.exit too).
"""

import atexit
import json
import runpy
import sys

_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")


def status() -> dict:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in _FIELDS:
                values[key] = int(rest.split()[0]) * 1024
    return values


def main() -> None:
    report, mode, *rest = sys.argv[1:]
    atexit.register(lambda: open(report, "w").write(json.dumps(status())))
    if mode == "-m":
        sys.argv = rest
        runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
    elif mode == "-c":
        sys.argv = ["-c", *rest[1:]]
        exec(compile(rest[0], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = [mode, *rest]
        runpy.run_path(mode, run_name="__main__")


if __name__ == "__main__":
    main()
