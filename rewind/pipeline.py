"""Export's engine: reading, computing and writing tensors overlap, in threads, with the bytes in flight bounded.

`run` writes files (`Lane`: a path, its safetensors header and its tensors in file order) whose tensors come from
`Job`s: a function that reads and computes one or more named CPU tensors, run by a pool of worker threads (pread,
torch kernels and the copies to and from a device release the GIL, so threads do overlap). Each file has a writer
thread that writes its tensors front to back as their jobs finish; `files_at_once` files are written at a time,
their tensors interleaved, so writes to separate files (separate inode locks) overlap too. A job takes its `cost` in
bytes from a `Budget` before it starts and gives it back once its last tensor is written, all but its `transient`
bytes (what it computes in, freed when it returns), given back as soon as it returns: peak memory is the budget plus
one job, not a shard, and a finished tensor waiting for its writer holds only its own bytes.

No deadlock: jobs are started in one order (the `_order` below), file j starts only after file j - files_at_once is
fully started, and its writer only after that file is written; so the earliest started, unwritten tensor always has
its bytes budgeted, a worker, and a writer. The first failure anywhere (a job's exception, a full disk) stops every
thread and is raised by `run` once they have all stopped, so nothing writes into a dir the caller then removes.

`run` adds to a `tensorio.Busy` the seconds its threads spent in jobs ("job"), writing and hashing, writers waiting
for a job's tensors ("write_wait") and the dispatcher waiting for the budget ("budget_wait"): where the time went.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from . import tensorio


@dataclass(frozen=True, eq=False)  # eq=False: a job is its own identity (one job can make several tensors)
class Job:
    make: Callable[[], dict[str, torch.Tensor]]
    cost: int = 0  # bytes held from the start of `make` until its last tensor is written...
    transient: int = 0  # ...but for these, of `cost`, held only until `make` returns


@dataclass(frozen=True)
class Lane:
    path: Path
    header: bytes
    names: list[str]  # its tensors, in file order


@dataclass(frozen=True)
class Settings:
    workers: int = 2  # threads running jobs
    files_at_once: int = 2  # files written at a time
    in_flight: int | None = 256 << 20  # the budget in bytes; None: unbounded


class Stopped(Exception):
    """The run failed elsewhere: stop taking work."""


class Budget:
    """Bytes in flight: `take` waits until `n` more fit (or nothing is in flight: a job larger than the budget
    still runs, alone)."""

    def __init__(self, limit: int | None):
        self.limit, self.used, self.peak = limit, 0, 0
        self.stopped = False
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.stopped or self._fits(n))
            if self.stopped:
                raise Stopped
            self.used += n
            self.peak = max(self.peak, self.used)

    def _fits(self, n: int) -> bool:
        return self.limit is None or not self.used or self.used + n <= self.limit

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()


class _Run:
    """What the threads of one `run` share."""

    def __init__(self, jobs: dict[str, Job], budget: Budget, progress: Callable[[], None] | None, busy: tensorio.Busy):
        self.jobs, self.budget, self.progress, self.busy = jobs, budget, progress, busy
        self.slots = {job: Future() for job in jobs.values()}  # each job's tensors, once made
        self.left = {job: 0 for job in jobs.values()}  # its tensors not yet written
        for job in jobs.values():
            self.left[job] += 1
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:  # the first failure is the cause; what follows is threads being stopped
                self.error = exc
        self.stop()

    def stop(self) -> None:
        self.budget.stop()
        for slot in self.slots.values():
            slot.cancel()  # jobs not started yet: their writers see CancelledError

    def written(self, job: Job) -> None:
        with self._lock:
            self.left[job] -= 1
            done = not self.left[job]
            if self.progress is not None:
                self.progress()
        if done:
            self.budget.give(job.cost - job.transient)


def run(
    lanes: list[Lane], jobs: dict[str, Job], settings: Settings, progress=None, busy: tensorio.Busy | None = None
) -> tuple[list[str], Budget]:
    """Write every lane's file. Returns their sha256s (in lane order) and the budget (its `peak` was in flight).
    `busy`: where the threads' seconds are added (see above)."""
    state = _Run(jobs, Budget(settings.in_flight), progress, busy or tensorio.Busy())
    with (
        ThreadPoolExecutor(settings.workers, "rewind-job") as pool,
        ThreadPoolExecutor(max(1, len(lanes)), "rewind-write") as writers,
    ):
        try:
            written = _dispatch(lanes, state, pool, writers, settings.files_at_once)
            wait(written)
        finally:
            state.stop()  # after success a no-op; else no job starts any more
    if state.error is not None:
        raise state.error
    return [f.result() for f in written], state.budget


def _dispatch(lanes, state: _Run, pool, writers, at_once: int) -> list[Future]:
    """Start each lane's writer and each job, in `_order`; returns the writers' futures."""
    written: dict[int, Future] = {}
    started = set()
    try:
        for j, name in _order([len(lane.names) for lane in lanes], at_once):
            if name is None:  # file j - at_once is its slot's previous one
                written[j] = writers.submit(_write_lane, lanes[j], written.get(j - at_once), state)
                continue
            job = state.jobs[lanes[j].names[name]]
            if job not in started:
                started.add(job)
                with state.busy.timing("budget_wait"):
                    state.budget.take(job.cost)
                pool.submit(_make, job, state)
    except Stopped:
        pass  # a thread failed: `run` raises its error
    return [written[j] for j in sorted(written)]


def _order(sizes: list[int], at_once: int) -> Iterator[tuple[int, int | None]]:
    """(lane, None) when a lane starts, then (lane, i) for its i-th tensor: round robin over `at_once` slots, slot k
    taking lanes k, k + at_once, ... each once the one before it is fully started."""
    active = []
    for k in range(min(at_once, len(sizes))):
        yield k, None
        active.append([k, 0])  # the slot's lane, its next tensor
    while active:
        for slot in list(active):
            lane, i = slot
            if i < sizes[lane]:
                yield lane, i
                slot[1] += 1
            elif lane + at_once < len(sizes):
                yield lane + at_once, None
                slot[:] = [lane + at_once, 0]
            else:
                active.remove(slot)


def _make(job: Job, state: _Run) -> None:
    slot = state.slots[job]
    if not slot.set_running_or_notify_cancel():
        return  # the run stopped before this job started
    try:
        with state.busy.timing("job"):
            made = job.make()
        state.budget.give(job.transient)  # before its tensors can be written (and the rest given back)
        slot.set_result(made)
    except BaseException as exc:
        slot.set_exception(exc)
        state.fail(exc)


def _write_lane(lane: Lane, after: Future | None, state: _Run) -> str:
    """Write one file, each tensor as soon as it is made; returns its sha256."""
    try:
        if after is not None:
            wait([after])  # at most `files_at_once` files written at a time
        if state.budget.stopped:
            raise Stopped
        with tensorio.ShardWriter(lane.path, lane.header, state.busy) as out:
            for name in lane.names:
                job = state.jobs[name]
                with state.busy.timing("write_wait"):
                    made = state.slots[job].result()
                out.write(name, made.pop(name))  # popped: freed once written
                state.written(job)
            return out.close()
    except BaseException as exc:
        if not isinstance(exc, (Stopped, CancelledError)):
            state.fail(exc)
        raise
