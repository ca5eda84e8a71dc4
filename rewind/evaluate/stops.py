"""lm-eval's stop-string criteria with the same decisions at a fraction of the host work per decoding step.

lm-eval stops a generation batch with one MultiTokenEOSCriteria per stop string: every step, each of them copies
the batch's generated tail to the host and decodes it for every row (`tokenizer.batch_decode`), marks a row done
once its stop string shows in its decoded window (its last generated tokens: the string's token count + 2), and
the batch stops when, for any one string, every row is done. A grid pass holds one row per point per request, so
that work grows with the points: 4 stop strings, 6 points and 64 requests are 1536 decodes per step (about 10 ms
of one CPU core, bench/README.md).

`StopStrings` is all of them as one criterion that answers every step as they do, decoding lazily. lm-eval's
answer at step t is: for some string, every row showed it in one of its windows up to t. A row's windows are
fixed by its generated tokens, which stay in `input_ids`, so they can be decoded when the answer needs them: per
string, rows in order, each from where it was last checked, stopping at the first row that never showed it (the
answer for that string is no). While no row is done that is one window per string per step, instead of one per
row; a window is decoded at most once per string, so the worst case is lm-eval's work. Decoding is the
tokenizer's `batch_decode`, as lm-eval's, so the texts and the decisions are the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import transformers


class StopStrings(transformers.StoppingCriteria):
    def __init__(self, tokenizer, stops: Sequence[str], prompt_length: int):
        self.tokenizer, self.stops, self.start = tokenizer, list(stops), prompt_length
        # as MultiTokenEOSCriteria's sequence_id_len: the string's tokens and 2 more (tokenizations differ)
        self.windows = [len(tokenizer.encode(s, add_special_tokens=False)) + 2 for s in self.stops]
        self.row = [0] * len(self.stops)  # per string: the rows before this one showed it
        self.checked = [0] * len(self.stops)  # per string: steps of its row whose windows did not show it

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        generated = input_ids[:, self.start :]
        rows = generated.shape[0]
        wanted = sorted({r for r in self.row if r < rows})
        fetched = dict(zip(wanted, generated[wanted].tolist()))  # one copy to the host for this step's rows
        return any([self._every_row_showed(s, generated, fetched) for s in range(len(self.stops))])

    def _every_row_showed(self, s: int, generated, fetched: dict[int, list[int]]) -> bool:
        n, steps = self.windows[s], generated.shape[1]
        while self.row[s] < generated.shape[0]:
            i = self.row[s]
            if i not in fetched:
                fetched[i] = generated[i].tolist()
            tokens, first = fetched[i], self.checked[s] + 1
            texts = self.tokenizer.batch_decode([tokens[max(0, t - n) : t] for t in range(first, steps + 1)])
            if not any(self.stops[s] in text for text in texts):
                self.checked[s] = steps
                return False
            self.row[s], self.checked[s] = i + 1, 0
        return True


def criteria(tokenizer, stops: Sequence[str], prompt_length: int, rows: int) -> transformers.StoppingCriteriaList:
    """What lm-eval's `stop_sequences_criteria` returns, as one StopStrings (`rows`: lm-eval's signature; the
    criterion reads the rows from `input_ids`)."""
    return transformers.StoppingCriteriaList([StopStrings(tokenizer, stops, prompt_length)])


@contextmanager
def fast_stops() -> Iterator[None]:
    """HFLM's `_model_generate` in here builds its stop criteria with `criteria` (it reads lm-eval's factory from
    its module's globals; the rest of its generation code stays lm-eval's)."""
    import lm_eval.models.huggingface as hf

    saved, hf.stop_sequences_criteria = hf.stop_sequences_criteria, criteria
    try:
        yield
    finally:
        hf.stop_sequences_criteria = saved
