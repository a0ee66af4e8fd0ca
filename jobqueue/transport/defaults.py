"""Celery defaults for jobqueue, loaded from inside the package.

These are the settings that do not depend on where you run. Everything that does (broker,
result backend, timeouts, identity) comes from ``jobqueue.config.Settings.from_env()``: set
``JOBQUEUE_*`` environment variables rather than editing this file. Extra Celery settings of a
deployment (message signing, TLS) go into a module of its own named by
``JOBQUEUE_CELERY_CONFIG``, loaded on top of these. The ``celeryconfig.py`` at the top of the
repository is a copy of this file to start that module from; a ``celeryconfig`` module on
``sys.path`` is never loaded by itself. See docs/configuration.md.
"""

# JSON only: no pickle ever crosses the broker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
event_serializer = "json"

# The monitor needs every lifecycle event, including "sent" (queued).
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True
# Extended results keep name, kwargs, worker and queue in the backend, so a monitor that
# started late can rebuild jobs that ended before it existed.
result_extended = True
result_expires = 7 * 24 * 3600

# A job whose worker dies is redelivered: ack only after the job ended, one job in hand.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# One worker per GPU, one job at a time. The threads pool keeps the task in the worker's own
# process, so the connectors (and their health loop) are shared with the running job.
worker_pool = "threads"
worker_concurrency = 1

# Jobs are routed explicitly (service / GPU / machine queues); nothing uses Celery's default.
task_default_queue = "jobqueue"
task_create_missing_queues = True
# Priorities: 20 broker levels, two per caller priority 0..9 (see jobqueue/shared/routing.py and
# docs/workflows.md). create_app sets the broker-specific default priority and, on Redis, a
# transport that keeps all 20 levels. RabbitMQ declares every queue with x-max-priority 19.
task_queue_max_priority = 19
task_default_priority = 10

# Event messages are transient: don't let a stopped monitor pile them up.
event_queue_ttl = 10.0
event_queue_expires = 60.0

broker_connection_retry_on_startup = True
broker_connection_max_retries = None
worker_lost_wait = 10.0
worker_hijack_root_logger = False
