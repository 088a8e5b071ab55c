"""A circuit breaker per store: after consecutive failures (or one timeout) calls fail fast for a cool-down, then
one probe decides whether the store answers again.

closed -> open: `failures` consecutive failures. One failure that is a timeout or took at least `slow_s` (each of
those cost a whole timeout to learn) half-opens it at once instead: calls fail fast while a probe runs right away. open: every call raises the store's own "unavailable"
error at once. After `cooldown_s` the breaker half-opens: with a `probe` (a cheap ping) the probe runs in the
background while callers still fail fast, so no answer waits on a store that may still hang; without one, the
next call goes through as the probe. A probe that succeeds closes the breaker; one that fails opens it again.
Errors that prove the store answers (a script error, a missing space) count as successes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")

DEFAULT_FAILURES = 3
DEFAULT_COOLDOWN_S = 0.5


class BreakerState(enum.IntEnum):
    """A breaker's state; the value is what `/metrics` exports (0 closed, 1 half-open, 2 open)."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        """Return the state as readiness reports it."""
        return self.name.lower().replace("_", "-")


class CircuitBreaker:
    """Guard calls to one store; `call` runs one, failing fast with `open_error(message)` while the breaker is open."""

    def __init__(
        self,
        name: str,
        *,
        open_error: Callable[[str], Exception],
        is_failure: Callable[[BaseException], bool],
        is_timeout: Callable[[BaseException], bool] = lambda exc: isinstance(exc, TimeoutError),
        failures: int = DEFAULT_FAILURES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        slow_s: float | None = None,
        probe: Callable[[], Awaitable[bool]] | None = None,
        probe_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or cooldown_s < 0:
            raise ValueError("a breaker needs failures >= 1 and cooldown_s >= 0")
        self.name = name
        self._open_error, self._is_failure, self._is_timeout = open_error, is_failure, is_timeout
        self._threshold, self._cooldown_s, self._slow_s = failures, cooldown_s, slow_s
        self._probe, self._probe_timeout_s, self._clock = probe, probe_timeout_s, clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False  # a probe (background ping or a caller's call) is out: everyone else fails fast
        self._probe_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, BreakerState], None]] = []
        self.last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        """Return the current state (open turns half-open only when a call finds the cool-down over)."""
        return self._state

    def on_change(self, listener: Callable[[str, BreakerState], None]) -> None:
        """Call `listener(name, state)` after every change of state (metrics gauges)."""
        self._listeners.append(listener)

    def off_change(self, listener: Callable[[str, BreakerState], None]) -> None:
        """Stop calling a listener given to `on_change`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` and record its outcome; while the breaker is open, raise `open_error` without calling it."""
        trial = self.admit()
        began = self._clock()
        try:
            result = await fn()
        except asyncio.CancelledError:
            if trial:  # the caller gave up on the probe: the next call probes again
                self._probing = False
            raise
        except BaseException as exc:
            self._outcome(exc, self._clock() - began)
            raise
        self.succeeded()
        return result

    def admit(self) -> bool:
        """Raise `open_error` unless a call may go now; return whether that call is the half-open trial."""
        if self._state is BreakerState.CLOSED:
            return False
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown_s:
            self._set(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            if self._probe is None:
                return True
            self._probe_task = asyncio.get_running_loop().create_task(self._run_probe(), name=f"breaker-{self.name}")
        raise self._open_error(self._refusal())

    def succeeded(self) -> None:
        """Record an answer from the store: it closes a half-open breaker and resets the count of failures."""
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:  # an answer during the probe counts like the probe's own
            self._probing = False
            self._set(BreakerState.CLOSED)

    def failed(self, exc: BaseException, *, opens: bool = False) -> None:
        """Record that the store did not answer; open after enough of them (at once with `opens`, or half-open)."""
        self.last_error = f"{type(exc).__name__}: {exc}"[:240]
        self._failures += 1
        if self._state is BreakerState.CLOSED and opens and self._probe is not None:
            # One timeout: probe at once rather than after a cool-down. A hung store fails the probe too (and opens
            # for the cool-down); a live one whose reply came late (a busy host, a stalled event loop) answers the
            # ping within milliseconds and closes the breaker, so a false alarm costs milliseconds, not a cool-down.
            self._set(BreakerState.HALF_OPEN)
            self._probing = True
            self._probe_task = asyncio.get_running_loop().create_task(self._run_probe(), name=f"breaker-{self.name}")
            return
        if self._state is BreakerState.HALF_OPEN or opens or self._failures >= self._threshold:
            self._probing = False
            self._opened_at = self._clock()
            if self._state is not BreakerState.OPEN:
                self._set(BreakerState.OPEN)

    async def close(self) -> None:
        """Stop a probe in flight (on shutdown)."""
        if self._probe_task is not None and not self._probe_task.done():
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task

    def _outcome(self, exc: BaseException, elapsed_s: float) -> None:
        if not self._is_failure(exc):
            self.succeeded()  # the store answered, with an error of the caller's making
            return
        slow = self._slow_s is not None and elapsed_s >= self._slow_s
        self.failed(exc, opens=slow or self._is_timeout(exc))

    async def _run_probe(self) -> None:
        assert self._probe is not None
        try:
            answered = await asyncio.wait_for(self._probe(), self._probe_timeout_s)
        except asyncio.CancelledError:
            self._probing = False
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the probe hit, the store did not answer
            self.failed(exc)
            return
        if answered:
            self.succeeded()
        else:
            self.failed(ConnectionError(f"{self.name} did not answer the probe"))

    def _refusal(self) -> str:
        if self._state is BreakerState.HALF_OPEN:
            when = "probing now"
        else:
            when = f"next probe in {max(0.0, self._cooldown_s - (self._clock() - self._opened_at)):.1f} s"
        return f"{self.name} is not answering (circuit open, {when}; last error: {self.last_error})"

    def _set(self, state: BreakerState) -> None:
        previous, self._state = self._state, state
        event = "breaker.opened" if state is BreakerState.OPEN else f"breaker.{state.label}"
        (log.warning if state is BreakerState.OPEN else log.info)(
            event, store=self.name, previous=previous.label, error=self.last_error)
        for listener in self._listeners:
            listener(self.name, state)
