"""Which bf16 construction of a point is closer to the exact model: written in place (point by point) or a grid row.

    python bench/bf16_agreement.py [--methods lora,oft] [--per-task 22] [--batch 22] [--new-tokens 48] \
        [--fp32-greedy] [--fp64] [--threads 1] [--out FILE]

Why: on an H200 in bf16, a grid sweep and a `--batch-points 1` sweep of the same points scored ~11% of 2036 items
differently (bench/item_agreement.py), with paired score differences near zero. Point by point rounds the whole
W0 + alpha dW to bf16; a grid row keeps W0 in bf16 and computes the branch (alpha s B(A x), or x + x D(alpha))
beside it. This script measures, on the embedded SmolLM2 (real weights) with the study's LoRA (linear path) and
the demo OFT (cayley path), each construction against REF, the fp32 model with the point written in fp32:
- MERGED: the bf16 model, the point written in place (Rewinder.set), a plain forward;
- GRID: the bf16 model at its base, the point as a grid row (rewind.grid), all points in one batch.
Prompts: the first --per-task validation items of each math-300 task, as lm-eval builds them (chat template), in
HFLM's order (longest first) and batches, left-padded with its pad token and no attention mask, as HFLM's
generate_until passes them. Per point:
- logits: REF's greedy continuation (--new-tokens, cut after the first stop token) teacher-forced through each
  construction; ||l - l_ref|| / ||l_ref|| at the prompt's last position and at every forced position, and the
  share whose top-1 token is REF's;
- greedy: the sequences (cut after the first stop token) that differ from REF's, and between MERGED and GRID;
- a defect check: the same grid in fp32 against REF (grid rows equal the in-place model up to fp32 rounding);
  --fp64 adds the fp64 model (the same base values), in place and as a grid, and measures REF, the fp32 grid and
  the fp64 grid against the fp64 in-place model: how far fp32 rounding alone moves the logits on this model.
Alpha 0 is the base for both constructions: its errors are bf16's own, the floor the points are read against.
CPU bf16 matmuls accumulate differently from CUDA's: this says which construction is closer to fp32, not the
H200's flip count. One JSON line per (method, alpha) on stdout, appended to --out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _records  # bench-local: the script's own directory is first on sys.path
import torch
from lm_eval.models.huggingface import HFLM

from rewind import engine, models
from rewind.evaluate import harness
from rewind.grid import install

RUNS = {"lora": ("docs/study/runs/lora-2026-12-02", "linear"), "oft": ("rewind/demo/oft-math", "cayley")}
POINTS = (0.0, 0.4, 1.0)
TASKS = ("math-300", "bench/tasks/math300")  # the study's target suite and its include dir
STOP_TEXTS = ("<|im_end|>", "<|endoftext|>")  # the math tasks' `until` strings that are single tokens here


class Prompts(HFLM):
    """HFLM that only keeps the generation requests' contexts, as lm-eval built them."""

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self.contexts += [r.args[0] for r in requests]
        return [""] * len(requests)


def prompt_batches(model, tokenizer, per_task: int, batch: int) -> list[torch.Tensor]:
    """The contexts of the first `per_task` validation items of every task, encoded as HFLM does, longest first,
    left-padded per batch."""
    suites = harness.resolve_suites([TASKS[0]], [TASKS[1]])
    evaluator = harness.Evaluator(model, tokenizer, suites, split="validation", limit=per_task, batch_size=batch)
    lm = Prompts(pretrained=model, tokenizer=tokenizer, batch_size=batch)
    lm.contexts = []
    for entry in evaluator.entries:
        evaluator.score(entry, lm=lm)
    contexts = sorted(lm.contexts, key=lambda c: -len(lm.tok_encode(c)))  # HFLM's order: longest first
    return [lm.tok_batch_encode(contexts[i : i + batch])[0] for i in range(0, len(contexts), batch)]


def greedy(model, ids: torch.Tensor, new_tokens: int, pad: int) -> torch.Tensor:
    """[rows, new_tokens] as HFLM's _model_generate decodes (no attention mask: pad = eos, so HF attends to all)."""
    out = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, use_cache=True)
    new = out[:, ids.shape[1] :]
    return torch.nn.functional.pad(new, (0, new_tokens - new.shape[1]), value=pad)


def forced_logits(model, ids: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """fp32 logits [rows, len(cont), vocab] of the positions that predict cont's tokens."""
    inputs = torch.cat([ids, cont[:, :-1]], dim=1)
    return model(input_ids=inputs, logits_to_keep=cont.shape[1]).logits.float()


def cut(tokens: list[int], stops: set[int]) -> list[int]:
    """Up to and including the first stop token: what lm-eval's `until` keeps of a generation."""
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


@torch.no_grad()
def merged(rw: engine.Rewinder, ids, conts, new_tokens: int, pad: int, decode=True) -> list[tuple]:
    """(greedy tokens or None, forced logits) per point, the point written in place; conts None: force its own
    greedy tokens."""
    out = []
    for k, alpha in enumerate(POINTS):
        rw.set(alpha)
        tokens = greedy(rw.model, ids, new_tokens, pad) if decode or conts is None else None
        out.append((tokens if decode else None, forced_logits(rw.model, ids, tokens if conts is None else conts[k])))
    rw.set(0.0)
    return out


@torch.no_grad()
def gridded(rw: engine.Rewinder, ids, conts, new_tokens: int, pad: int, decode=True) -> list[tuple]:
    """The same through one grid: every point a block of rows of one batch."""
    grid, rows = install(rw), len(ids)
    try:
        with grid.at(POINTS, rows=rows):
            tokens = greedy(rw.model, ids.repeat(len(POINTS), 1), new_tokens, pad) if decode else None
            logits = forced_logits(rw.model, ids.repeat(len(POINTS), 1), torch.cat(conts))
    finally:
        grid.remove()
    return [
        (None if tokens is None else tokens[k * rows : (k + 1) * rows], logits[k * rows : (k + 1) * rows])
        for k in range(len(POINTS))
    ]


def rounded(x: float) -> float:
    return float(f"{x:.3g}")


class Tally:
    """One construction at one point against REF, over all batches."""

    def __init__(self):
        self.rel_last, self.rel_all, self.top1_last, self.top1_all = [], [], [], []
        self.sequences, self.differ, self.diverge_at = 0, 0, []

    def add(self, logits, ref_logits, valid, tokens, ref_sequences, stops) -> list[list[int]]:
        rel = torch.linalg.vector_norm(logits - ref_logits, dim=-1) / torch.linalg.vector_norm(ref_logits, dim=-1)
        same = logits.argmax(-1) == ref_logits.argmax(-1)
        self.rel_last += rel[:, 0].tolist()
        self.rel_all += rel[valid].tolist()
        self.top1_last += same[:, 0].tolist()
        self.top1_all += same[valid].tolist()
        if tokens is None:
            return []
        sequences = [cut(row, stops) for row in tokens.tolist()]
        for seq, ref in zip(sequences, ref_sequences):
            self.sequences += 1
            if seq != ref:
                self.differ += 1
                self.diverge_at.append(next(i for i, (a, b) in enumerate(zip(seq + [-1], ref + [-1])) if a != b))
        return sequences

    def summary(self) -> dict:
        rel = sorted(self.rel_all)
        out = {
            "rel_last_median": statistics.median(self.rel_last),
            "rel_last_max": max(self.rel_last),
            "rel_median": statistics.median(rel),
            "rel_p99": rel[int(0.99 * (len(rel) - 1))],
            "rel_max": rel[-1],
            "positions": len(rel),
            "top1_last": round(sum(self.top1_last) / len(self.top1_last), 4),
            "top1_all": round(sum(self.top1_all) / len(self.top1_all), 5),
            "top1_all_missed": len(self.top1_all) - sum(self.top1_all),
        }
        if self.sequences:
            out.update(sequences=self.sequences, greedy_differ=self.differ, diverge_at=sorted(self.diverge_at))
        return {k: rounded(v) if isinstance(v, float) else v for k, v in out.items()}


@torch.no_grad()
def weight_rounding(ref_rw: engine.Rewinder, bf16_rw: engine.Rewinder, alpha: float) -> dict:
    """How much of the update a bf16 in-place write keeps, over the updated tensors (medians): the update's size
    ||W - W0|| / ||W0|| (fp32) and the write's error relative to it, ||bf16(W) - W|| / ||W - W0||."""
    ref_rw.set(alpha)
    bf16_rw.set(alpha)
    ref_params, bf16_params = dict(ref_rw.model.named_parameters()), dict(bf16_rw.model.named_parameters())
    size, error = [], []
    for name, w0 in ref_rw.w0.items():
        w, update = ref_params[name], ref_params[name] - w0
        size.append(float(update.norm() / w0.norm()))
        error.append(float((bf16_params[name].float() - w).norm() / update.norm()) if update.any() else 0.0)
    ref_rw.set(0.0)
    bf16_rw.set(0.0)
    return {"update_size": rounded(statistics.median(size)), "write_error": rounded(statistics.median(error))}


class Clock:
    """Seconds per stage of a batch, reported on stderr (a run takes minutes on 2 CPU cores)."""

    def __init__(self, label: str):
        self.label, self.seconds = label, {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[stage] = round(time.perf_counter() - start, 1)
        return out

    def report(self) -> None:
        print(self.label, self.seconds, file=sys.stderr, flush=True)


# (construction, what it is measured against): bf16 and the fp32 grid against REF, the fp32 in-place model;
# with --fp64, the fp32 constructions and the fp64 grid against the fp64 in-place model.
AGAINST_REF = (("merged", "ref"), ("grid", "ref"), ("grid_fp32", "ref"))
AGAINST_FP64 = (("ref", "merged_fp64"), ("grid_fp32", "merged_fp64"), ("grid_fp64", "merged_fp64"))


def batch_runs(rws: dict, ids, args, clock) -> dict[str, list[tuple]]:
    """Every construction's (tokens, forced logits) per point on one batch, forced on REF's greedy tokens."""
    pad, n = rws["fp32"].tokenizer.pad_token_id, args.new_tokens
    runs = {"ref": clock("ref", merged, rws["fp32"], ids, None, n, pad)}
    conts = [tokens for tokens, _ in runs["ref"]]
    runs["merged"] = clock("merged", merged, rws["bf16"], ids, conts, n, pad)
    runs["grid"] = clock("grid", gridded, rws["bf16"], ids, conts, n, pad)
    runs["grid_fp32"] = clock("grid_fp32", gridded, rws["fp32"], ids, conts, n, pad, args.fp32_greedy)
    if "fp64" in rws:
        runs["merged_fp64"] = clock("merged_fp64", merged, rws["fp64"], ids, conts, n, pad, False)
        runs["grid_fp64"] = clock("grid_fp64", gridded, rws["fp64"], ids, conts, n, pad, False)
    return runs


def compare(batches, rws: dict, stops, args) -> list[dict]:
    """Per point, over all batches: each construction against what it is measured against (AGAINST_*), and the
    greedy sequences that MERGED and GRID decode differently, and alike but not as REF does."""
    pairs = AGAINST_REF + (AGAINST_FP64 if "fp64" in rws else ())
    tallies = [{pair: Tally() for pair in pairs} for _ in POINTS]
    # greedy sequences: MERGED and GRID differ from each other; they agree with each other but not with REF
    apart, together = [0] * len(POINTS), [0] * len(POINTS)
    for i, ids in enumerate(batches):
        clock = Clock(f"batch {i + 1}/{len(batches)}")
        runs = batch_runs(rws, ids, args, clock)
        clock.report()
        for k in range(len(POINTS)):
            ref_sequences = [cut(row, stops) for row in runs["ref"][k][0].tolist()]
            valid = torch.arange(args.new_tokens) < torch.tensor([len(s) for s in ref_sequences])[:, None]
            seen = {}
            for name, against in pairs:
                tokens, logits = runs[name][k]
                tokens = tokens if against == "ref" else None  # the fp64 model is not decoded
                tally = tallies[k][name, against]
                seen[name] = tally.add(logits, runs[against][k][1], valid, tokens, ref_sequences, stops)
            rows = list(zip(seen["merged"], seen["grid"], ref_sequences))
            apart[k] += sum(m != g for m, g, _ in rows)
            together[k] += sum(m == g != r for m, g, r in rows)
    out = []
    for k, alpha in enumerate(POINTS):
        line = {"alpha": alpha, "weights": weight_rounding(rws["fp32"], rws["bf16"], alpha)}
        line.update({name: tallies[k][name, "ref"].summary() for name, _ in AGAINST_REF})
        line.update(merged_vs_grid=apart[k], merged_and_grid_alike_not_ref=together[k])
        if "fp64" in rws:
            line["against_fp64"] = {name: tallies[k][name, against].summary() for name, against in AGAINST_FP64}
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,oft")
    parser.add_argument("--per-task", type=int, default=22, help="validation items of each math-300 task")
    parser.add_argument("--batch", type=int, default=22, help="prompts per batch (a grid pass: this x 3 rows)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--fp32-greedy", action="store_true", help="decode the fp32 grid too (slower)")
    parser.add_argument("--fp64", action="store_true", help="also measure the fp32 constructions against fp64")
    # On 2 shared cores, 2 threads made small decoding matmuls ~18x slower (OpenMP waits on the busy core)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = {dtype: models.load_base("smollm2", "cpu", dtype) for dtype in ("fp32", "bf16")}
    tokenizer = loaded["fp32"][1]
    if args.fp64:  # the fp32 load upcast again: the same base values
        loaded["fp64"] = (models.load_base("smollm2", "cpu", "fp32")[0].double(), tokenizer)
    batches = prompt_batches(loaded["bf16"][0], tokenizer, args.per_task, args.batch)
    stops = {tokenizer.convert_tokens_to_ids(t) for t in STOP_TEXTS}
    for method in args.methods.split(","):
        adapter, path = RUNS[method]
        start = time.perf_counter()
        rws = {
            dtype: engine.attach(model, adapter, path=path, tokenizer=tokenizer) for dtype, (model, _) in loaded.items()
        }
        for line in compare(batches, rws, stops, args):
            record = {
                "method": method,
                "adapter": adapter,
                "path": path,
                **line,
                "prompts": sum(len(b) for b in batches),
                "new_tokens": args.new_tokens,
                "batch": args.batch,
                "seconds": round(time.perf_counter() - start, 1),
                "threads": torch.get_num_threads(),
            }
            _records.emit(record, args.out)


if __name__ == "__main__":
    main()
