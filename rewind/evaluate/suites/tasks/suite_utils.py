"""Data loading and scoring for the bundled task YAMLs (referenced from them as `!function suite_utils.X`).

lm-eval imports this file by path, so it imports nothing from rewind.
"""

from __future__ import annotations

import gzip
import json
import re
import string
from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def load(data: str, **_metadata):
    """`custom_dataset` hook: both splits of data/<data>.<split>.jsonl.gz, read without the HF datasets cache.

    lm-eval passes the task's metadata as keyword arguments too; only `data` (from dataset_kwargs) matters.
    """
    import datasets

    splits = {}
    for split in ("validation", "test"):
        with gzip.open(DATA_DIR / f"{data}.{split}.jsonl.gz", "rt", encoding="utf-8") as f:
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
