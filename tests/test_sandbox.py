"""Issue 7, security: generated code is scored in a separate, time- and memory-limited process in a temporary dir
(rewind/evaluate/sandbox.py), never in rewind's process; code-offline (HumanEval) scores through it."""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

from rewind.evaluate import harness, sandbox
from rewind.evaluate.suites import DATA_DIR, SPLITS, TASKS_DIR

sys.path.insert(0, str(TASKS_DIR))
import suite_utils  # lm-eval loads it by path; the tests import it the same way


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_correct_program_passes_and_a_wrong_one_fails():
    program = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
    result = sandbox.run(program)
    assert result.passed and result.status == "passed" and result.seconds > 0, result
    result = sandbox.run(program.replace("a + b", "a * b"))
    assert not result.passed and result.status == "failed" and "AssertionError" in result.stderr


def test_exiting_before_the_tests_is_not_a_pass():
    for early in ("import sys; sys.exit(0)", "import os; os._exit(0)", "exit()"):
        result = sandbox.run(f"{early}\nassert False\n")
        assert result.status == "failed", (early, result)


def test_an_endless_loop_times_out_and_leaves_no_process_behind():
    program = (
        "import os, subprocess, sys\n"
        "print(os.getpid(), file=sys.stderr, flush=True)\n"
        "try:  # a background child, where the process limit allows one (it does not for root)\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "    print(child.pid, file=sys.stderr, flush=True)\n"
        "except OSError:\n"
        "    pass\n"
        "while True:\n"
        "    pass\n"
    )
    start = time.monotonic()
    result = sandbox.run(program, timeout=1.0)
    assert result.status == "timeout" and not result.passed
    assert 1.0 <= result.seconds < 6.0 and time.monotonic() - start < 8.0  # slack for a busy machine
    pids = [int(line) for line in result.stderr.split()]
    assert pids
    deadline = time.monotonic() + 2.0  # SIGKILL is delivered asynchronously
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(pid) for pid in pids), pids


def test_a_huge_allocation_is_an_error_in_the_child_only():
    result = sandbox.run("x = [0] * 10**10\n")  # 80 GB of pointers, far past the 1 GiB address-space limit
    assert result.status == "error" and "MemoryError" in result.stderr
    result = sandbox.run("x = bytearray(600 << 20)\n", memory=256 << 20)
    assert result.status == "error"
    assert sandbox.run("x = bytearray(64 << 20)\n").passed  # well within the limit


def test_the_program_runs_in_a_temporary_dir_that_is_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = (
        "import os, sys\n"
        "print(os.getcwd(), file=sys.stderr)\n"
        "open('written.txt', 'w').write('x')\n"
        "assert sorted(os.listdir('.')) == ['program.py', 'written.txt'], os.listdir('.')\n"
    )
    result = sandbox.run(program)
    assert result.passed, result
    cwd = Path(result.stderr.strip())
    assert cwd.name.startswith("rewind-sandbox-") and cwd != tmp_path
    assert not cwd.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_callers_environment_is_not_passed_on(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret_value")
    program = (
        "import os\n"
        "assert 'HF_TOKEN' not in os.environ and 'AWS_SECRET_ACCESS_KEY' not in os.environ\n"
        "assert not any('secret_value' in v for v in os.environ.values()), os.environ\n"
    )
    assert sandbox.run(program).passed


def read_data(split: str) -> list[dict]:
    with gzip.open(DATA_DIR / f"code_humaneval.{split}.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def test_canonical_solutions_pass_the_suite_scorer_and_empty_completions_fail():
    docs = read_data("validation")[:3] + read_data("test")[:2]
    for doc in docs:
        assert suite_utils.code_pass_at_1(doc, [doc["canonical_solution"]]) == {"pass_at_1": 1.0}, doc["task_id"]
        assert suite_utils.code_pass_at_1(doc, [""]) == {"pass_at_1": 0.0}, doc["task_id"]


def test_completions_are_taken_from_a_fenced_block_or_as_a_continuation():
    doc = read_data("test")[0]
    body, prompt, name = doc["canonical_solution"], doc["prompt"], doc["entry_point"]
    function = prompt.lstrip() + body
    responses = [
        body,  # the body, continuing the prompt's function
        f"Sure! Here it is:\n```python\n{function}```\nIt works because...",  # the whole function, fenced
        f"```Python\n{function}",  # fenced, cut off by the token limit before the closing fence
        function,  # the whole function, no fence
        # A wrong demo after a right function does not fail it; it is not run.
        f"```python\n{function}\nprint({name}(None))\nassert {name} is None\n"
        "if __name__ == '__main__':\n    1 / 0\n```",
    ]
    for response in responses:
        assert suite_utils.code_pass_at_1(doc, [response])["pass_at_1"] == 1.0, response
    for wrong in ["    return None\n", f"```python\ndef {name}(*args):\n    return None\n```", "I cannot help."]:
        assert suite_utils.code_pass_at_1(doc, [wrong])["pass_at_1"] == 0.0, wrong


def test_code_offline_resolves_and_loads_in_lm_eval():
    [suite] = harness.resolve_suites(["code-offline"])
    assert suite.tasks == ("code_offline_humaneval",) and suite.include_path == TASKS_DIR
    task = harness._bundled_manager().load(["code_offline_humaneval"])["tasks"]["code_offline_humaneval"]
    assert task.get_config("output_type") == "generate_until" and task.UNSAFE_CODE
    assert task.get_config("metadata")["primary_metric"] == "pass_at_1,none"
    assert task.get_config("generation_kwargs")["max_gen_toks"] == 384
    for split in SPLITS:
        task.set_config(key="test_split", value=split)
        docs = list(task.eval_docs)
        assert len(docs) == len(read_data(split)) == 82
        assert docs[0]["prompt"] in task.doc_to_text(docs[0])
    ids = {d["task_id"] for s in SPLITS for d in read_data(s)}
    assert len(ids) == 164  # all of HumanEval, each problem in one split
