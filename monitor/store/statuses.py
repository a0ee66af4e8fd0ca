"""The statuses the monitor stores and shows, as ``str`` enums.

Job statuses are jobqueue's own (:class:`jobqueue.states.JobStatus`); workers and machines
have statuses only the monitor knows, defined here. The tuples are the stored strings the
store's queries filter on; the final ones are :data:`jobqueue.states.FINAL_STATUSES`.
"""

from __future__ import annotations

from enum import Enum

from jobqueue.states import FINAL_JOB_STATES, JobStatus


class WorkerStatus(str, Enum):
    """Whether a worker is alive, as the monitor sees it."""

    ONLINE = "online"
    OFFLINE = "offline"
    #: Shown only: an online worker asked to stop consuming (stored as ``draining``).
    DRAINING = "draining"

    def __str__(self) -> str:
        return self.value


class MachineStatus(str, Enum):
    """A machine is online while any of its workers is."""

    ONLINE = "online"
    OFFLINE = "offline"

    def __str__(self) -> str:
        return self.value


#: Job statuses that count as "unfinished" in a snapshot, as stored strings.
OPEN_STATUSES = tuple(s.value for s in JobStatus if s not in FINAL_JOB_STATES)
#: Final statuses that count as a failure in a worker's failed count.
FAILED_STATUSES = (JobStatus.FAILED.value, JobStatus.TIMED_OUT.value)
#: Statuses of a job that holds (or held, when its worker vanished) a worker.
ON_WORKER_STATUSES = (JobStatus.ASSIGNED.value, JobStatus.PROCESSING.value)
#: Statuses whose jobs carry an error worth grouping in the failure statistics.
ERROR_STATUSES = (JobStatus.FAILED.value, JobStatus.TIMED_OUT.value, JobStatus.RETRYING.value,
                  JobStatus.LOST.value, JobStatus.CANCELLED.value)
