"""Continuous batching across callers (``sqlora serve``): questions that arrive while others are being
generated join the running batch of our engine (:meth:`sqlora.infer.fast.FastEngine.stream`) at its next
step, and those about one database share its schema's prefix (its keys and values computed once, kept for
the last few databases); a caller that gives up leaves the batch at the next step.

One thread owns the model and runs the engine; callers :meth:`LiveEngine.submit` token ids and get a
:class:`Ticket` (a future of their Generations, and ``cancel``). The waiting line is bounded: when it is
full, ``submit`` raises :class:`Busy` at once rather than queueing work nobody will wait for.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from sqlora.errors import SqloraError
from sqlora.infer.base import Batch, Generation
from sqlora.infer.plan import DecodingPlan

if TYPE_CHECKING:
    from sqlora.infer.fast import StreamRow

# torch and our engine (transformers' internals) are imported where used: importing this module (ask,
# serve's request types) must work where the engine cannot, which then falls back to transformers' generate().

log = logging.getLogger("sqlora.infer.live")


@dataclass(frozen=True)
class Sampling:
    """How one request's answers are chosen: greedily (temperature 0), or ``n`` drawn with ``temperature``/``top_p``."""

    max_new_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random stream


class Busy(SqloraError):
    """Every place in the waiting line is taken; ``retry_after``: seconds after which one likely frees up."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Ticket:
    """A submitted request: ``future`` gives its Generations (one per choice); ``cancel`` takes it out of the
    line, or out of the running batch at the next step. ``on_text(choice, text)`` hears each choice's text
    as it grows (called on the engine's thread)."""

    def __init__(self, number: int, on_text: Callable[[int, str], None] | None):
        self.number, self.on_text = number, on_text
        self.future: concurrent.futures.Future[list[Generation]] = concurrent.futures.Future()
        self.cancelled = False
        self._wake: Callable[[], None] = lambda: None

    def cancel(self) -> None:
        self.cancelled = True
        self.future.cancel()  # only while it waits: a running request's future ends when its rows have left
        self._wake()


@dataclass
class _Request:
    ticket: Ticket
    batch: Batch
    sampling: Sampling
    names: object | None  # SchemaNames (constrained decoding)
    joined: float = 0.0  # perf_counter() when it joined the batch


class LiveEngine:
    """Our engine, running in a thread of its own, fed by many callers (see the module's docstring)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 16,
        max_waiting: int = 64,
        max_new_tokens: int = 128,
        constrained: bool = False,
    ):
        from sqlora.infer.fast import FastEngine

        plan = DecodingPlan(decoding="greedy", search="greedy", candidates=1, batch_size=batch_size, max_new_tokens=max_new_tokens)
        self.engine = FastEngine(model, tokenizer, plan, seed=0)
        self.constrained = constrained
        if constrained:  # each request brings its database's names; the engine reads them by row index
            from sqlora.infer.constrained import TokenChecker

            self.engine.constraints, self.engine.checker = {}, TokenChecker(tokenizer, self.engine.eos)
        self.batch_size, self.max_waiting = batch_size, max_waiting
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}
        self._encoded: dict[int, list[int]] = {}  # row index -> prompt ids, while the row lives
        self._numbers = itertools.count()
        self._indexes = itertools.count()
        self._seconds = 1.0  # a running mean of a request's time in the batch (Retry-After)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="sqlora-engine", daemon=True)
        self._thread.start()

    # --- callers' side --------------------------------------------------------------------------------

    def submit(
        self, ids: list[int], prefix: int, sampling: Sampling, names=None, on_text: Callable[[int, str], None] | None = None
    ) -> Ticket:
        """Queue ``ids`` (a prompt's tokens, of which the first ``prefix`` are its database's schema prefix);
        Busy when the waiting line is full, SqloraError for a request the batch cannot hold."""
        if not 1 <= sampling.n <= self.batch_size:
            raise SqloraError(f"n is {sampling.n}: from 1 to {self.batch_size} choices per request")
        if self.constrained and names is None:
            raise SqloraError("constrained decoding needs the question's schema names")
        with self._lock:
            if self._closed:
                raise SqloraError("the engine is closed")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"{len(self._waiting)} requests are waiting already", retry_after=max(1, math.ceil(self._seconds)))
            ticket = Ticket(next(self._numbers), on_text)
            indexes = [next(self._indexes) for _ in range(sampling.n)]
            batch = Batch(number=ticket.number, indexes=indexes, prefix=max(0, min(prefix, len(ids) - 1)))
            for index in indexes:
                self._encoded[index] = ids
                if self.constrained:
                    self.engine.constraints[index] = names
            ticket._wake = self._wake
            self._waiting.append(_Request(ticket, batch, sampling, names))
            self._lock.notify_all()
        return ticket

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=30)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    # --- the engine's side -----------------------------------------------------------------------------

    def _serve(self) -> None:
        import torch

        feed = _LiveFeed(self)
        while True:
            try:
                with torch.inference_mode():
                    for batch, rows in self.engine.stream(feed, self._encoded, 1):
                        self._finish(batch, rows)
                return  # closed
            except Exception as exc:  # noqa: BLE001 - a bug fails the requests it met, not the server
                log.exception("the engine failed; its running requests get the error")
                with self._lock:
                    running, self._running = list(self._running.values()), {}
                for request in running:
                    self._forget(request)
                    if not request.ticket.future.done():
                        request.ticket.future.set_exception(exc)

    def _finish(self, batch: Batch, rows: list) -> None:
        with self._lock:
            request = self._running.pop(batch.number)
        seconds = sum(r.seconds for r in rows)
        generations = [self.engine.finish(r, seconds, r.seconds) for r in sorted(rows, key=lambda r: r.index)]
        self._forget(request)
        self._seconds = 0.9 * self._seconds + 0.1 * (time.perf_counter() - request.joined)
        if not request.ticket.future.done():
            request.ticket.future.set_result(generations)

    def _forget(self, request: _Request) -> None:
        with self._lock:
            for index in request.batch.indexes:
                self._encoded.pop(index, None)
                if self.constrained:
                    self.engine.constraints.pop(index, None)


class _LiveFeed:
    """The LiveEngine's requests as the engine's rows (a :class:`sqlora.infer.fast.Feed`): whole requests
    join, cancelled ones are dropped."""

    def __init__(self, live: LiveEngine):
        self.live = live

    def _prune(self) -> None:
        """Requests cancelled while waiting leave the line (the caller holds the lock)."""
        live = self.live
        for request in [r for r in live._waiting if r.ticket.cancelled]:
            live._waiting.remove(request)
            live._forget(request)

    def waiting(self) -> int:
        with self.live._lock:
            self._prune()
            return sum(r.sampling.n for r in self.live._waiting)

    def take(self, free: int) -> list[StreamRow]:
        live, rows = self.live, []
        with live._lock:
            self._prune()
            while live._waiting and live._waiting[0].sampling.n <= free - len(rows):
                request = live._waiting.popleft()
                live._running[request.ticket.number] = request
                request.joined = time.perf_counter()
                rows += [self._row(request, k, index) for k, index in enumerate(request.batch.indexes)]
        return rows

    def _row(self, request: _Request, choice: int, index: int) -> StreamRow:
        import torch

        from sqlora.infer.constrained import RowConstraint
        from sqlora.infer.fast import StreamRow

        sampling = request.sampling
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator()
            if sampling.seed is None:
                generator.seed()
            else:
                generator.manual_seed(sampling.seed * 1_009 + choice)
        return StreamRow(
            index=index,
            sample=choice,
            batch=request.batch,
            generator=generator,
            constraint=RowConstraint(request.names) if request.names is not None else None,
            budget=sampling.max_new_tokens,
            temperature=sampling.temperature or 1.0,
            top_p=sampling.top_p,
        )

    def idle(self) -> bool:
        live = self.live
        with live._lock:
            while not live._closed and not any(not r.ticket.cancelled for r in live._waiting):
                self._prune()
                live._lock.wait()
            return not live._closed

    def dropped(self, row: StreamRow) -> bool:
        request = self.live._running.get(row.batch.number)
        return request is not None and request.ticket.cancelled

    def abandoned(self, batch: Batch) -> None:
        with self.live._lock:
            request = self.live._running.pop(batch.number, None)
        if request is not None:
            self.live._forget(request)

    def advanced(self, row: StreamRow, text: str) -> None:
        request = self.live._running.get(row.batch.number)
        if request is not None and request.ticket.on_text is not None:
            try:
                request.ticket.on_text(row.sample, text)
            except Exception:  # noqa: BLE001 - a listener's failure is not the batch's
                log.exception("a streaming listener failed")
