"""Write math-offline's three reasoning-gym tasks with more items, as a task dir for `rewind sweep --include-path`.

The bundled math-offline tasks hold 100 validation and 100 test items each; a study that needs more (issue 17: at
least 256 per target task) generates them the same way (rewind/evaluate/suites/build.py: the same generators and
settings, item seeds from EVAL_SEED, every prompt that a training seed below TRAIN_SEED_LIMIT produces dropped,
alternate items to validation and test), only more of them. The tasks are named math_N_<generator> and tagged
math-N, scored exactly as the bundled ones.

    python bench/math_tasks.py --items 300 --out bench/tasks/math300
    rewind sweep --include-path bench/tasks/math300 --target math-300 ...
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

from rewind.evaluate.suites import build

TASK = """include: {template}
task: math_{n}_{name}
tag: math-{n}
custom_dataset: !function utils.load
dataset_kwargs:
  data: {name}
doc_to_text: "{{{{question}}}}"
process_results: !function utils.math_exact_match
"""

UTILS = '''"""The bundled math tasks' loader and scorer, reading the data in this dir."""

from pathlib import Path

from rewind.evaluate.suites.tasks.suite_utils import math_exact_match, read_splits  # noqa: F401


def load(data: str, **_metadata):
    return read_splits(Path(__file__).parent, data)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=300, help="items per split of each task")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    build.MATH_PER_SPLIT = args.items
    # Relative, so the dir keeps working in a copy of the checkout elsewhere (the GPU box).
    template = os.path.relpath(Path(build.__file__).parent / "tasks" / "_math_template.yaml", args.out.resolve())
    for name, splits in build.math_items().items():
        for split, rows in splits.items():
            with gzip.GzipFile(args.out / f"{name}.{split}.jsonl.gz", "wb", mtime=0) as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
        task = TASK.format(template=template, n=args.items, name=name)
        (args.out / f"math_{args.items}_{name}.yaml").write_text(task)
    (args.out / "utils.py").write_text(UTILS)


if __name__ == "__main__":
    main()
