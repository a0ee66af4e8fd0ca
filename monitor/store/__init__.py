"""The monitor's store: machines, workers, connectors, jobs, their event timeline, and the
change log that feeds websocket clients.

One module per job: :mod:`~monitor.store.models` (tables), :mod:`~monitor.store.engine`
(the engine, SQLite pragmas), :mod:`~monitor.store.migrate` (the schema under Alembic
migrations, :mod:`~monitor.store.migrations`), :mod:`~monitor.store.tx` (a write transaction),
:mod:`~monitor.store.changelog` (sequence numbers and the change log),
:mod:`~monitor.store.serialise` (JSON shapes), :mod:`~monitor.store.queries` (reads) and
:mod:`~monitor.store.store` (the :class:`Store` that ties them together). Everything other
modules use is importable from here.
"""

from __future__ import annotations

from jobqueue.states import FINAL_STATUSES
from monitor.store.counts import job_counts
from monitor.store.medians import MEDIAN_WINDOW
from monitor.store.models import (
    JOB_SORTS,
    JOB_WHEN,
    Base,
    ChangeRow,
    ConnectorRow,
    CounterRow,
    JobEventRow,
    JobRow,
    MachineRow,
    ServiceStatRow,
    WorkerRow,
)
from monitor.store.serialise import connector_dict, job_dict, machine_dict, service_dict, worker_dict
from monitor.store.statuses import FAILED_STATUSES, OPEN_STATUSES
from monitor.store.store import Store
from monitor.store.tx import MAX_EVENTS_PER_JOB, Change, Tx

#: The row classes under their earlier names, for code written before the rename (bench,
#: other slices); new code uses the ``*Row`` names.
Job = JobRow
Worker = WorkerRow
Connector = ConnectorRow
Machine = MachineRow

__all__ = [
    "FAILED_STATUSES", "FINAL_STATUSES", "JOB_SORTS", "JOB_WHEN", "MAX_EVENTS_PER_JOB", "MEDIAN_WINDOW",
    "OPEN_STATUSES", "Base", "Change", "ChangeRow", "Connector", "ConnectorRow", "CounterRow", "Job",
    "JobEventRow", "JobRow", "Machine", "MachineRow", "ServiceStatRow", "Store", "Tx", "Worker", "WorkerRow",
    "connector_dict", "job_counts", "job_dict", "machine_dict", "service_dict", "worker_dict",
]
