"""Settings: defaults, JOBQUEUE_* overrides, and clear errors for values we cannot use."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from jobqueue.config import DEFAULT_BROKER_URL, Settings
from jobqueue.errors import ConfigError
from jobqueue.transport import defaults as celery_defaults
from jobqueue.transport.app import broker_transport_options, celery_settings, create_app
from jobqueue.worker.identity import gpu_from_queues


def test_settings_without_environment_use_the_local_redis_and_the_host_name():
    # Given an empty environment
    # When settings are read
    settings = Settings.from_env({})
    # Then the broker is the local Redis, the results go there too, the machine is this host
    assert settings.broker_url == DEFAULT_BROKER_URL
    assert settings.result_backend == DEFAULT_BROKER_URL
    assert settings.machine_id == socket.gethostname()
    assert settings.gpu is None
    assert settings.connectors == ("simulation",)
    assert settings.is_redis


def test_every_kind_of_setting_is_overridden_by_its_environment_variable():
    env = {
        "JOBQUEUE_BROKER_URL": "redis://10.0.0.5:6380/3",
        "JOBQUEUE_MACHINE_ID": "rig-7",
        "JOBQUEUE_GPU": "2",
        "JOBQUEUE_CONNECTORS": "simulation, comfyui",
        "JOBQUEUE_COMFYUI_URLS": "gpu0=http://127.0.0.1:8188, gpu1=http://127.0.0.1:8189",
        "JOBQUEUE_VISIBILITY_TIMEOUT": "12.5",
        "JOBQUEUE_LEASE_INTERVAL": "3",
        "JOBQUEUE_MAX_RETRIES": "0",
        "JOBQUEUE_MONITOR_READ_ONLY": "yes",
        "UNRELATED": "ignored",
    }
    settings = Settings.from_env(env)
    assert settings.broker_url == "redis://10.0.0.5:6380/3"
    assert settings.result_backend == "redis://10.0.0.5:6380/3"
    assert settings.machine_id == "rig-7"
    assert settings.gpu == 2
    assert settings.connectors == ("simulation", "comfyui")
    assert settings.comfyui_url_for(1) == "http://127.0.0.1:8189"
    assert settings.comfyui_url_for(5) == settings.comfyui_url
    assert settings.visibility_timeout == 12.5
    assert settings.lease_interval == 3.0
    assert settings.max_retries == 0
    assert settings.monitor_read_only is True


def test_an_empty_gpu_variable_means_from_the_queue():
    assert Settings.from_env({"JOBQUEUE_GPU": ""}).gpu is None
    assert gpu_from_queues(["simulation", "gpu3", "gpu1"]) == 3
    assert gpu_from_queues(["simulation"]) is None


def test_keyword_overrides_win_over_the_environment():
    settings = Settings.from_env({"JOBQUEUE_MACHINE_ID": "from-env"}, machine_id="explicit")
    assert settings.machine_id == "explicit"


def test_a_rabbitmq_broker_keeps_its_results_in_the_local_redis():
    settings = Settings.from_env({"JOBQUEUE_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    assert not settings.is_redis
    assert settings.result_backend == DEFAULT_BROKER_URL
    # and RabbitMQ needs none of the Redis lease/restore transport options; publisher confirms
    # only with quorum queues
    assert broker_transport_options(settings) == {}
    quorum = Settings.from_env({"JOBQUEUE_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
                                "JOBQUEUE_RABBITMQ_QUEUE_TYPE": "quorum"})
    assert broker_transport_options(quorum) == {"confirm_publish": True}


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("JOBQUEUE_LEASE_INTERVAL", "soon", "JOBQUEUE_LEASE_INTERVAL"),
        ("JOBQUEUE_MAX_RETRIES", "1.5", "JOBQUEUE_MAX_RETRIES"),
        ("JOBQUEUE_GPU", "first", "JOBQUEUE_GPU"),
        ("JOBQUEUE_MONITOR_READ_ONLY", "maybe", "boolean"),
        ("JOBQUEUE_COMFYUI_URLS", "http://127.0.0.1:8188", "key=url"),
        ("JOBQUEUE_VISIBILITY_TIMEOUT", "0", "JOBQUEUE_VISIBILITY_TIMEOUT"),
        ("JOBQUEUE_VISIBILITY_TIMEOUT", "3", "at most half"),
        ("JOBQUEUE_MAX_RETRIES", "-1", "JOBQUEUE_MAX_RETRIES"),
        ("JOBQUEUE_GPU", "-2", "JOBQUEUE_GPU"),
        ("JOBQUEUE_MONITOR_PORT", "70000", "JOBQUEUE_MONITOR_PORT"),
        ("JOBQUEUE_INPUT_ALLOWED_NETWORKS", "10.0.0.0/8,fleet", "JOBQUEUE_INPUT_ALLOWED_NETWORKS: 'fleet' is not a CIDR"),
    ],
)
def test_a_bad_value_raises_a_config_error_that_names_the_problem(variable, value, complaint):
    # Given one unusable variable
    # When settings are read
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    # Then the error says what is wrong
    assert complaint in str(caught.value)


def test_the_redis_transport_restores_often_and_leases_within_the_visibility_timeout():
    settings = Settings.from_env({"JOBQUEUE_VISIBILITY_TIMEOUT": "10", "JOBQUEUE_LEASE_INTERVAL": "2"})
    options = broker_transport_options(settings)
    assert options["visibility_timeout"] == 10.0
    # the restore sweep runs every lease interval, not kombu's default ~100 s
    assert options["unacked_restore_interval"] == 2
    assert options["unacked_restore_throttle"] == 1
    # and a sweeper killed while holding the sweep's lock blocks the others for one visibility
    # timeout, not kombu's 5 minutes (kombu's channel really takes the option)
    assert options["unacked_mutex_expire"] == 10
    from kombu import Connection

    with Connection("redis://127.0.0.1:6379/15", transport_options=options) as conn:
        assert conn.default_channel.qos.unacked_mutex_expire == 10


def test_the_celery_app_speaks_json_only_and_redelivers_jobs_of_dead_workers():
    app = create_app(Settings.from_env({}))
    try:
        conf = app.conf
        assert conf.task_serializer == "json" and conf.accept_content == ["json"]
        assert conf.result_serializer == "json"
        assert conf.task_acks_late and conf.task_reject_on_worker_lost
        assert conf.worker_prefetch_multiplier == 1
        assert conf.worker_send_task_events and conf.task_send_sent_event
    finally:
        app.close()


def test_every_setting_is_documented_with_its_variable():
    # Given the documentation of the configuration
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    # Then every Settings field appears there under its environment variable
    missing = [f"JOBQUEUE_{name.upper()}" for name in Settings.model_fields if f"`JOBQUEUE_{name.upper()}`" not in text]
    assert missing == []


def test_settings_survive_the_trip_through_the_environment():
    # Given settings with every kind of value
    original = Settings(
        broker_url="redis://127.0.0.1:6379/3", machine_id="m1", gpu=2,
        connectors=("simulation", "comfyui"), comfyui_urls={"gpu0": "http://a:1", "gpu1": "http://b:2"},
        monitor_read_only=True, stall_timeout=7.5, max_retries=4,
    ).resolved()
    # When they are written as JOBQUEUE_* variables and read back
    rebuilt = Settings.from_env(original.to_env())
    # Then nothing changed
    assert rebuilt == original


class _ProbeSettings(Settings):
    """Settings with one optional float, the kind none of today's fields has."""

    #: An optional ratio (not a real setting: it exercises the ``float | None`` type).
    probe_ratio: float | None = None


def test_each_field_type_parses_from_its_environment_text():
    # Given an optional float, an int, a boolean and a list, all as environment text
    env = {
        "JOBQUEUE_PROBE_RATIO": " 0.25 ",
        "JOBQUEUE_MONITOR_THREADS": "8",
        "JOBQUEUE_MONITOR_READ_ONLY": "off",
        "JOBQUEUE_WORKER_TAGS": "customer:acme, region:eu",
    }
    # When settings are read
    settings = _ProbeSettings.from_env(env)
    # Then each value has its field's real type, not the text it came as
    assert settings.probe_ratio == 0.25 and isinstance(settings.probe_ratio, float)
    assert settings.monitor_threads == 8 and isinstance(settings.monitor_threads, int)
    assert settings.monitor_read_only is False
    assert settings.worker_tags == ("customer:acme", "region:eu")
    # and an empty optional means "not set"
    assert _ProbeSettings.from_env({"JOBQUEUE_PROBE_RATIO": ""}).probe_ratio is None


def test_an_optional_float_that_is_not_a_number_is_refused_by_name():
    with pytest.raises(ConfigError) as caught:
        _ProbeSettings.from_env({"JOBQUEUE_PROBE_RATIO": "half"})
    assert "JOBQUEUE_PROBE_RATIO='half'" in str(caught.value)
    assert "number" in str(caught.value)


def test_every_bad_variable_is_named_in_one_error():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"JOBQUEUE_MONITOR_PORT": "http", "JOBQUEUE_STALL_TIMEOUT": "long"})
    assert "JOBQUEUE_MONITOR_PORT='http'" in str(caught.value)
    assert "JOBQUEUE_STALL_TIMEOUT='long'" in str(caught.value)


def test_settings_built_in_code_read_nothing_from_the_environment(monkeypatch):
    # Given a machine id exported in the process environment
    monkeypatch.setenv("JOBQUEUE_MACHINE_ID", "from-the-environment")
    # When settings are built from keyword arguments alone
    settings = Settings(broker_url=DEFAULT_BROKER_URL).resolved()
    # Then the environment played no part (only Settings.from_env reads it)
    assert settings.machine_id == socket.gethostname()
    assert Settings.from_env().machine_id == "from-the-environment"


def test_an_unknown_keyword_or_a_wrong_type_in_code_is_a_config_error():
    with pytest.raises(ConfigError, match="JOBQUEUE_NO_SUCH_SETTING"):
        Settings(no_such_setting=1)
    with pytest.raises(ConfigError, match="JOBQUEUE_MAX_RETRIES"):
        Settings(max_retries="many")


def test_the_celery_defaults_come_from_inside_the_package_not_from_sys_path(tmp_path, monkeypatch):
    # Given a stray celeryconfig.py first on sys.path, with a setting jobqueue never uses
    (tmp_path / "celeryconfig.py").write_text('task_serializer = "pickle"\nworker_concurrency = 99\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    # When the Celery app is built
    app = create_app(Settings.from_env({}))
    try:
        # Then the packaged defaults are in force, the stray module ignored
        assert app.conf.task_serializer == "json"
        assert app.conf.worker_concurrency == 1
    finally:
        app.close()


def test_a_module_named_by_jobqueue_celery_config_is_loaded_on_top_of_the_defaults(tmp_path, monkeypatch):
    # Given a deployment's own Celery module, which also tries to set the broker
    (tmp_path / "site_celery_e.py").write_text(
        'import os\nworker_lost_wait = 42.0\nbroker_url = "redis://elsewhere:1/0"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    # When the app is built with it named in JOBQUEUE_CELERY_CONFIG
    app = create_app(Settings.from_env({"JOBQUEUE_CELERY_CONFIG": "site_celery_e"}))
    try:
        # Then its setting is in force, the other defaults stay, and JOBQUEUE_BROKER_URL still wins
        assert app.conf.worker_lost_wait == 42.0
        assert app.conf.task_acks_late is True
        assert app.conf.broker_url == DEFAULT_BROKER_URL
    finally:
        app.close()


def test_a_celery_config_module_that_does_not_import_is_a_config_error():
    with pytest.raises(ConfigError, match="JOBQUEUE_CELERY_CONFIG='no_such_module_e'"):
        create_app(Settings.from_env({"JOBQUEUE_CELERY_CONFIG": "no_such_module_e"}))


def test_the_example_celeryconfig_at_the_top_of_the_repository_equals_the_packaged_defaults():
    # Given the example a deployment copies, loaded from its file (it is not installed)
    path = Path(__file__).resolve().parents[2] / "celeryconfig.py"
    spec = importlib.util.spec_from_file_location("celeryconfig_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # Then it sets exactly what jobqueue loads from inside the package
    assert celery_settings(example) == celery_settings(celery_defaults)
    assert celery_settings(example)["task_acks_late"] is True
