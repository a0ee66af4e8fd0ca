"""Queue depths count every priority level of a queue, on the monitor's own Celery app."""

from __future__ import annotations

from jobqueue.client.jobs import submit_job
from jobqueue.shared.routing import MAX_PRIORITY, MIN_PRIORITY
from monitor.web.broker import monitor_celery_app, queue_depths


def test_queue_depths_count_jobs_of_every_priority(settings):
    # Given a monitor app (no tasks registered) and one job at every caller priority
    app = monitor_celery_app(settings)
    try:
        assert "jobqueue.run_job" not in app.tasks
        priorities = range(MIN_PRIORITY, MAX_PRIORITY + 1)
        for priority in priorities:
            submit_job("simulation", {"steps": 0}, priority=priority, app=app)
        # When the monitor measures the queue
        depths = queue_depths(app, ["simulation", "comfyui"])
    finally:
        app.close()
    # Then every job is counted, whatever its broker level
    assert depths == {"simulation": len(priorities), "comfyui": 0}
