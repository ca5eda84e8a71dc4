"""rewind's one stop-string criterion decides step by step as lm-eval's list of MultiTokenEOSCriteria does."""

from __future__ import annotations

import pytest
import torch
from lm_eval.models.utils_hf import stop_sequences_criteria
from transformers import AutoTokenizer

from rewind import models
from rewind.evaluate import stops

STOPS = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "\n\n"]  # the math tasks' and a plain-text one


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(models.embedded_dir())


def _generation(tokenizer, rows: int, steps: int, seed: int, padded: int, plants: int) -> torch.Tensor:
    """Random tokens with up to `plants` stop strings planted at random steps per row, every `padded`-th row ending
    in padding instead (as a row finished by its EOS continues; the pad token is SmolLM2's <|im_end|>):
    [rows, prompt + steps]."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2000, (rows, 6 + steps), generator=gen)
    planted = [tokenizer.encode(s, add_special_tokens=False) for s in STOPS]
    for row in range(rows):
        if row % padded == padded - 1:
            ids[row, 6 + int(torch.randint(steps, (1,), generator=gen)) :] = tokenizer.pad_token_id
            continue
        for _ in range(int(torch.randint(plants + 1, (1,), generator=gen))):
            tokens = planted[int(torch.randint(len(planted), (1,), generator=gen))]
            at = 6 + int(torch.randint(steps - len(tokens) + 1, (1,), generator=gen))
            ids[row, at : at + len(tokens)] = torch.tensor(tokens)
    return ids


def _decisions(tokenizer, ids: torch.Tensor, prompt: int) -> list[bool]:
    """Whether the batch stops after each generated step, asserting at every step that ours says what lm-eval's
    says; and that the rows tell the strings apart (some shown, not all by every row)."""
    rows = ids.shape[0]
    lm_eval_criteria = stop_sequences_criteria(tokenizer, STOPS, prompt, rows)
    ours = stops.criteria(tokenizer, STOPS, prompt, rows)
    decisions = []
    for step in range(1, ids.shape[1] - prompt + 1):
        seen = ids[:, : prompt + step]
        expected = lm_eval_criteria(seen, None)
        assert torch.equal(ours(seen, None), expected), step
        decisions.append(bool(expected.all()))
    done = [c.done_tracker for c in lm_eval_criteria]
    assert any(any(d) for d in done) and not all(all(d) for d in done)
    return decisions


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("padded", [4, 1])
def test_every_step_decides_as_lm_eval(tokenizer, seed, padded):
    decisions = _decisions(tokenizer, _generation(tokenizer, 12, 24, seed, padded, plants=2), prompt=6)
    if padded == 1:  # every row padded: <|im_end|> (the pad token) shows in every row, at different steps
        assert decisions[-1] and not decisions[0]


def test_a_string_every_row_shows_stops_the_batch_when_lm_eval_does(tokenizer):
    stopped = [_decisions(tokenizer, _generation(tokenizer, 3, 24, seed, 99, plants=8), 6) for seed in range(4)]
    assert any(d[-1] and not d[0] for d in stopped)  # rows done at different steps: the lazy catch-up decides


def test_no_stop_strings_never_stop(tokenizer):
    ids = _generation(tokenizer, 4, 8, 0, 4, 2)
    assert not stops.criteria(tokenizer, [], 6, 4)(ids, None).any()
