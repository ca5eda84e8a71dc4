"""Data loading and scoring for the bundled task YAMLs (referenced from them as `!function suite_utils.X`).

lm-eval imports this file by path, so it imports nothing from rewind; the code sandbox is loaded by path too.
"""

from __future__ import annotations

import ast
import functools
import gzip
import importlib.util
import json
import re
import string
import sys
from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SANDBOX = Path(__file__).resolve().parents[2] / "sandbox.py"  # rewind/evaluate/sandbox.py


def load(data: str, **_metadata):
    """`custom_dataset` hook: both splits of data/<data>.<split>.jsonl.gz, read without the HF datasets cache.

    lm-eval passes the task's metadata as keyword arguments too; only `data` (from dataset_kwargs) matters.
    """
    return read_splits(DATA_DIR, data)


def read_splits(directory: Path, data: str):
    """Both splits of <directory>/<data>.<split>.jsonl.gz as a DatasetDict (task dirs made like the bundled ones,
    e.g. bench/math_tasks.py's, load through this too)."""
    import datasets

    splits = {}
    for split in ("validation", "test"):
        with gzip.open(directory / f"{data}.{split}.jsonl.gz", "rt", encoding="utf-8") as f:
            splits[split] = datasets.Dataset.from_list([json.loads(line) for line in f])
    return datasets.DatasetDict(splits)


# --- math: the answer inside <answer> tags (the format reasoning-gym trains), else \boxed{}, else the last number.
_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str:
    for pattern in (_ANSWER_TAG, _BOXED):
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else text.strip()


def _as_number(text: str) -> Decimal | None:
    text = text.strip().strip("$").rstrip(".").replace(",", "").replace(" ", "")
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def answers_match(predicted: str, gold: str) -> bool:
    """Numeric equality when both parse as numbers ("1,000.0" == "1000"), else case-blind string equality."""
    a, b = _as_number(predicted), _as_number(gold)
    if a is not None and b is not None:
        return a == b
    return predicted.strip().lower() == gold.strip().lower()


def math_exact_match(doc: dict, results: list[str]) -> dict:
    return {"exact_match": float(answers_match(extract_answer(results[0]), doc["answer"]))}


# --- SQuAD-style answer normalization (the official v1.1 script's), for SQuAD and qa_wikidata.
_PUNCTUATION = set(string.punctuation)


def _normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = _normalize(prediction).split(), _normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(doc: dict, results: list[str]) -> dict:
    prediction = results[0]
    return {
        "exact_match": float(max(_normalize(prediction) == _normalize(a) for a in doc["answers"])),
        "f1": max(_f1(prediction, a) for a in doc["answers"]),
    }


def wikidata_exact_match(doc: dict, results: list[str]) -> dict:
    return {"exact_match": float(any(_normalize(results[0]) == _normalize(t) for t in doc["targets"]))}


def perplexity(doc: dict, results: list[float]) -> dict:
    (loglikelihood,) = results
    words, size = len(doc["text"].split()), len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, size),
        "bits_per_byte": (loglikelihood, size),
    }


# --- code: HumanEval pass@1. The answer is the first fenced block of the response (a chat model's usual reply),
# else the whole response: a function, or the body that continues the prompt's. Prompt + code + the problem's tests
# run in rewind's sandbox: a separate, limited process, never this one.
CODE_TIMEOUT = 10.0  # seconds per program, far above what the canonical solutions need (suites/README.md)
_FENCED = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)  # to the closing fence, or to the end if cut off
# Top-level statements kept from a whole-function answer; calls, prints, asserts and `if` blocks are its demo.
_DEFINITIONS = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
)


@functools.cache
def _sandbox():
    """rewind/evaluate/sandbox.py, loaded by path as lm-eval loads this file (it needs the standard library only)."""
    spec = importlib.util.spec_from_file_location("_rewind_sandbox", SANDBOX)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up there
    spec.loader.exec_module(module)
    return module


def _definitions(code: str) -> str:
    """`code` without its top-level demo statements, so that a wrong example does not fail a right function (as
    evalplus sanitizes). Only parsed, never run; code that does not parse is kept as it is and fails in the test."""
    try:
        tree = ast.parse(code)
        return ast.unparse(ast.Module([node for node in tree.body if isinstance(node, _DEFINITIONS)], []))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code


def code_program(doc: dict, response: str) -> str:
    """The program that tests `response`: the prompt, the model's code, the tests, the call to check()."""
    fenced = _FENCED.search(response)
    code = fenced.group(1) if fenced else response
    if re.search(rf"^def {re.escape(doc['entry_point'])}\s*\(", code, re.M):
        # A whole function: after the prompt, whose imports and helper functions it may use.
        code = "\n" + _definitions(code) + "\n"
    return f"{doc['prompt']}{code}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def code_pass_at_1(doc: dict, results: list[str]) -> dict:
    return {"pass_at_1": float(_sandbox().run(code_program(doc, results[0]), timeout=CODE_TIMEOUT).passed)}
