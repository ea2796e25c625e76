"""A budget on decoded pixels in flight, shared by the requests of one process.

CLIPSEG_MAX_IMAGE_PIXELS bounds one image; it does not bound three of them decoded at once (a
6 KB single-colour 7000x7000 PNG costs about 1.15 GB of worker memory while it is decoded,
converted and predicted; three at once peaked at 3.9 GB). An image reserves its pixel count
before it is decoded and gives it back when its request is done with it; a reservation that
does not fit waits a little, then fails (the request is answered 503 with Retry-After).
"""

from __future__ import annotations

import threading
import time


class PixelBudgetExceeded(Exception):
    """The pixels in flight leave no room for this image within the wait."""


class Reservation:
    """`pixels` of a budget, given back by `release()` (once; later calls do nothing)."""

    def __init__(self, budget: PixelBudget, pixels: int) -> None:
        self._budget = budget
        self.pixels = pixels
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._budget._give_back(self.pixels)


class PixelBudget:
    """At most `capacity` decoded pixels reserved at a time (per process)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the pixel budget must be >= 1")
        self.capacity = capacity
        self.in_flight = 0
        self._cond = threading.Condition()

    def reserve(self, pixels: int, wait: float) -> Reservation:
        """Reserve `pixels`, waiting at most `wait` seconds for room; PixelBudgetExceeded if
        there is none by then (at once for an image larger than the whole budget)."""
        if pixels > self.capacity:
            raise PixelBudgetExceeded(
                f"{pixels} pixels are more than the whole budget (CLIPSEG_PIXEL_BUDGET="
                f"{self.capacity})"
            )
        deadline = time.monotonic() + max(wait, 0.0)
        with self._cond:
            while self.in_flight + pixels > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PixelBudgetExceeded(
                        f"{self.in_flight} decoded pixels in flight; this image's {pixels} "
                        f"would pass CLIPSEG_PIXEL_BUDGET={self.capacity} (waited {wait:g} s)"
                    )
                self._cond.wait(left)
            self.in_flight += pixels
        return Reservation(self, pixels)

    def _give_back(self, pixels: int) -> None:
        with self._cond:
            self.in_flight -= pixels
            self._cond.notify_all()


__all__ = ["PixelBudget", "PixelBudgetExceeded", "Reservation"]
