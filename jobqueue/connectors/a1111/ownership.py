"""Whose job the WebUI runs right now: ours, one of our abandoned requests, or another client's.

The WebUI releases its queue lock *before* it encodes an answer's images, so the next
client's job already runs while our answer is on its way: ownership is decided anew at every
poll, never once for the rest of the job.

* With task ids (A1111 1.8+, Forge): the follower asks ``/internal/progress`` for our
  task before and after reading ``/sdapi/v1/progress``; the state is ours only when both
  answers say our task is ``active`` (a task is active once, so the state read between them
  is surely ours).
* Without (A1111 1.7, or ``--nowebui``): :class:`JobOrder` counts the jobs that begin after
  our request was sent. The WebUI runs requests in the order they reach its queue lock, so the
  jobs of our abandoned requests still queued then begin first (each is interrupted as it
  begins), and the next one is ours; the first job to begin after ours is not. A job begins
  when ``state.job_timestamp`` changes, after an idle state, or when the state goes back
  (``job_count`` back to -1, ``job_no``/``sampling_step`` back, ``interrupted`` cleared). Best
  effort: another client's request that reaches the lock between ours and the job before it
  is taken for ours; only task ids can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _position(shown: dict[str, Any]) -> tuple[int, int]:
    return int(shown.get("job_no") or 0), int(shown.get("sampling_step") or 0)


def began_since(previous: dict[str, Any] | None, shown: dict[str, Any]) -> bool:
    """True when the running job ``shown`` is not the one ``previous`` showed."""
    if previous is None:
        return True
    if shown.get("job_timestamp") != previous.get("job_timestamp"):
        return True
    if previous.get("interrupted") and not shown.get("interrupted"):
        return True
    if int(previous.get("job_count") or 0) > 0 and shown.get("job_count") == -1:
        return True
    return _position(shown) < _position(previous)


@dataclass
class OrderVerdict:
    """What one observed state means for our request."""

    ours: bool
    #: A job of one of our abandoned requests has just begun (interrupt it).
    orphan_began: bool = False


class JobOrder:
    """Our request's place among the jobs the WebUI begins after we sent it."""

    def __init__(self, running_at_post: dict[str, Any] | None, orphans_ahead: int) -> None:
        #: The state of the job running when we posted (None: the WebUI was idle).
        self._previous = running_at_post
        self.orphans_ahead = orphans_ahead
        self.begun = 0

    def observe(self, shown: dict[str, Any]) -> OrderVerdict:
        """Take one ``state`` of ``/sdapi/v1/progress``; say whether it is our job's."""
        if int(shown.get("job_count") or 0) == 0:
            self._previous = None  # idle: whatever runs next has begun since
            return OrderVerdict(False)
        new = began_since(self._previous, shown)
        self._previous = dict(shown)
        if new:
            self.begun += 1
        return OrderVerdict(self.begun == self.orphans_ahead + 1, new and self.begun <= self.orphans_ahead)
