"""The training page's speed control: a run slowed evenly over its steps so that it lasts at least
`min_seconds` (0: full speed). A 2-epoch run is over in about 3 s at full speed, too fast to watch; the
page's default stretches a short run to MIN_SECONDS_DEFAULT and leaves a long one as it is.

The waits happen in the training thread between engine calls (every STEP_CHUNK steps), are cut short when
the run is stopped or its pace changes, and are not training time: the images/s the page shows leave them
out. Paused time is not owed either.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from lenet.serve.http import fail

MIN_SECONDS_DEFAULT = 20.0  # the page's default; the API's is 0 (full speed), so scripts are never slowed
MAX_SECONDS = 3600.0
FIELD = "min_seconds"


class Pace:
    """Waits after each engine call so that `total_steps` steps take at least `min_seconds`."""

    def __init__(self, min_seconds: float, total_steps: int) -> None:
        self.min_seconds, self.total = min_seconds, max(1, total_steps)
        self.due = time.perf_counter()  # when the steps done so far may be done, at this pace
        self.wake = threading.Event()  # set: stop waiting now (the run stops, or its pace changed)
        self.waited = 0.0  # seconds spent waiting since the last call of `waited_since`

    def set(self, min_seconds: float) -> None:
        """A new pace, from now on (any thread)."""
        self.min_seconds = min_seconds
        self.wake.set()

    def restart(self) -> None:
        """After a pause: the time paused is not owed."""
        self.due = time.perf_counter()

    def after(self, steps: int) -> None:
        """Wait, if need be, so that the run keeps its pace after `steps` more steps. A slow machine owes
        nothing: time is never banked."""
        now = time.perf_counter()
        self.due = max(self.due + self.min_seconds * steps / self.total, now)
        if self.due > now:
            if self.wake.wait(self.due - now):  # woken early
                self.wake.clear()
                self.due = time.perf_counter()
            self.waited += time.perf_counter() - now

    def waited_since(self) -> float:
        """The seconds waited since the last call (taken out of the training time)."""
        waited, self.waited = self.waited, 0.0
        return waited


def checked_seconds(value: Any) -> float:
    """`value` as a min_seconds: a number of seconds in 0-MAX_SECONDS; 422 with the reason otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(422, f"{FIELD} must be a number of seconds (got {str(value)[:40]!r})")
    if not 0 <= value <= MAX_SECONDS:  # also NaN and infinity
        raise fail(422, f"{FIELD} must be in 0-{MAX_SECONDS:g} seconds (got {str(value)[:40]})")
    return float(value)
