"""Every long-lived Redis connection is configured to notice a dead peer (jobqueue/transport/redis_health.py).

The behaviour itself is tested through the real path in tests/monitor/ingest/test_dead_peer.py (a
proxy that stops forwarding); these check that workers, clients and the monitor all get it.
"""

from __future__ import annotations

import socket

from jobqueue.config import Settings
from jobqueue.transport.app import configure_app
from jobqueue.transport.redis_health import keepalive_options, redis_kwargs, socket_timeout


def test_keepalive_probes_start_after_the_interval_and_give_up_after_three():
    options = keepalive_options(9.0)
    assert options[socket.TCP_KEEPIDLE] == 9
    assert options[socket.TCP_KEEPINTVL] == 3
    assert options[socket.TCP_KEEPCNT] == 3


def test_commands_time_out_after_twice_the_interval_but_never_under_five_seconds():
    assert socket_timeout(10.0) == 20.0
    assert socket_timeout(1.0) == 5.0
    assert redis_kwargs(10.0)["health_check_interval"] == 10


def test_broker_and_result_backend_connections_check_their_peer():
    # Given settings with a 4 s health interval on a Redis broker
    settings = Settings(broker_url="redis://127.0.0.1:6379/7", redis_health_interval=4.0).resolved()
    # When the Celery app is built (workers, clients and the monitor all build it this way)
    app = configure_app(settings)
    # Then kombu's broker connections PING (BRPOP and pub/sub checks) and keep TCP alive
    options = app.conf.broker_transport_options
    assert options["health_check_interval"] == 4
    assert options["socket_keepalive"] is True
    assert options["socket_keepalive_options"] == keepalive_options(4.0)
    assert options["socket_timeout"] == 8.0
    # And the result backend's connections too
    assert app.conf.redis_backend_health_check_interval == 4
    assert app.conf.redis_socket_keepalive is True
    assert app.conf.redis_socket_timeout == 8.0
    # (the backend's client really carries them)
    kwargs = app.backend.connparams
    assert kwargs["health_check_interval"] == 4 and kwargs["socket_keepalive"] is True
    app.close()
