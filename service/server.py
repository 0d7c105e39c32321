"""uvicorn with the service's shutdown sequence: what `imgzoo serve` runs.

On the first SIGTERM (or Ctrl-C), at time t0, with grace period G and delay D (settings
`graceful_shutdown_s`, `shutdown_delay_s`):

1. at once: `/readyz` answers 503 and new predictions 503 `shutting_down` (with Retry-After and
   `Connection: close`); requests already past admission and images already queued go on;
2. at t0 + D: the listening socket closes and idle keep-alive connections are closed; open
   requests keep running;
3. shortly before t0 + G - R (R, a reserve for the release of the sessions, is the smaller of
   2 s and G / 4): images still waiting in a queue are answered 503 `shutting_down`, so no
   caller is left without an answer; then uvicorn cancels whatever is still open (a client
   that never finishes sending its body, say);
4. the app's lifespan drains and releases the models, bounded by t0 + G, and the process exits
   with status 0.

A second signal skips the rest of the delay; a second Ctrl-C exits at once (uvicorn's rule).
This module imports uvicorn: only `imgzoo serve` imports it, inside the command.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from types import FrameType

import uvicorn

from service.core import Service

logger = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    """A uvicorn server that drains `service` within `grace_s` seconds of a signal."""

    def __init__(
        self, config: uvicorn.Config, service: Service, *, grace_s: float, delay_s: float
    ) -> None:
        super().__init__(config)
        self._service = service
        self._grace_s = grace_s
        self._delay_s = min(delay_s, grace_s)
        self._signalled_at: float | None = None
        self._announced = False

    @property
    def reserve_s(self) -> float:
        """Time kept at the end of the grace period for releasing the models."""
        return min(2.0, self._grace_s / 4)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled_at is None:
            # A signal handler: flags only. The rest happens on the event loop (`on_tick`).
            self._signalled_at = time.monotonic()
            self._service.begin_shutdown(stop_by=self._signalled_at + self._grace_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._signalled_at is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                logger.info(
                    "shutting down: not ready, refusing new requests; listening for %.1f s "
                    "more, exiting within %.1f s",
                    self._delay_s,
                    self._grace_s,
                )
            if time.monotonic() >= self._signalled_at + self._delay_s:
                self._stop_listening()
        return await super().on_tick(counter)

    def _stop_listening(self) -> None:
        """Hand over to uvicorn's shutdown with what is left of the grace period."""
        assert self._signalled_at is not None
        now = time.monotonic()
        left = self._signalled_at + self._grace_s - self.reserve_s - now
        # uvicorn takes whole seconds; rounding down keeps the exit inside the grace period.
        wait_s = max(0, math.floor(left))
        self.config.timeout_graceful_shutdown = wait_s
        # Answer what still waits in a queue just before uvicorn gives up on open requests.
        abort_in = max(0.0, wait_s - min(0.5, wait_s / 2))
        asyncio.get_running_loop().call_later(abort_in, self._service.abort_queued)
        logger.info("shutting down: closing the listener; open requests have %d s", wait_s)
        self.should_exit = True
