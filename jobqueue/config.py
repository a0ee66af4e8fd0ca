"""Configuration, read in one place.

Every setting has a laptop default and a ``JOBQUEUE_*`` variable (docs/configuration.md lists
them); ``Settings.from_env()`` alone reads the environment, everything else gets a ``Settings``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from jobqueue.errors import ConfigError
from jobqueue.transport.redis_urls import is_redis_url, is_sentinel_url

#: Every setting's environment variable is this prefix + the field name in capitals.
ENV_PREFIX = "JOBQUEUE_"

#: Broker used when nothing is configured: the local Redis, database 0.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

_QUOTA_ENTRY = re.compile(r"\s*(?:[^=;\s]+\s*=\s*(?:(?:queued|running|weight):[1-9][0-9]*\s*(?:,\s*|$))+)?")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _parse_map(value: str, variable: str = "JOBQUEUE_COMFYUI_URLS") -> dict[str, str]:
    """Parse ``gpu0=http://127.0.0.1:8188,gpu1=http://127.0.0.1:8189`` (or ``comfyui=50``)."""
    result: dict[str, str] = {}
    what = "url" if variable.endswith("_URLS") else "number" if variable.endswith("_SERVICE") else "value"
    for part in _split(value):
        key, sep, url = part.partition("=")
        if not sep or not key.strip() or not url.strip():
            raise ValueError(f"expected key={what} in {variable}, got {part!r}")
        result[key.strip()] = url.strip()
    return result


def default_result_backend(broker_url: str) -> str:
    """Return the result backend that goes with ``broker_url``.

    On Redis the results live in the same Redis (a database of its own would need a second
    URL to keep in sync, so we keep it simple); on RabbitMQ the results still need a store
    that survives the client, so we fall back to the local Redis.
    """
    return broker_url if is_redis_url(broker_url) else DEFAULT_BROKER_URL


class Settings(BaseSettings):
    """Every knob of jobqueue, with its default. Build it with :meth:`from_env`.

    A pydantic-settings model: each field's annotation is its real type, so a value read from
    the environment is converted (and refused) by that type, never by guesswork. Constructing
    ``Settings(...)`` directly reads nothing from the environment; only :meth:`from_env` does.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    #: Celery broker URL (Redis or RabbitMQ).
    broker_url: str = DEFAULT_BROKER_URL
    #: Celery result backend URL; defaults to the broker's Redis.
    result_backend: str = ""
    #: The machine this process runs on (workers report it; defaults to the host name).
    machine_id: str = ""
    #: GPU index of this worker; None means "from the gpu<N> queue, else 0".
    gpu: int | None = None
    #: Connectors a worker enables, by service name.
    connectors: tuple[str, ...] = ("simulation",)
    #: ComfyUI base URL for a worker with no per-GPU entry.
    comfyui_url: str = "http://127.0.0.1:8188"
    #: Per-GPU ComfyUI URLs, e.g. {"gpu0": "http://127.0.0.1:8188"}.
    comfyui_urls: Mapping[str, str] = Field(default_factory=dict)
    #: Where fetched outputs (images) are written.
    output_dir: str = "./jobqueue-outputs"
    #: Fault switch for tests and demos: while this file exists the simulated service is down.
    simulation_down_file: str = ""
    #: Redis visibility timeout (s): how long an unacked message may sit before redelivery.
    visibility_timeout: float = 10.0
    #: How often (s) a running job extends its lease and the worker restores expired messages.
    lease_interval: float = 2.0
    #: How often (s) a worker checks each connector's service.
    health_interval: float = 5.0
    #: How often (s) a worker re-sends every connector status even when nothing changed.
    status_beat: float = 15.0
    #: Seconds without any sign of life from the service before a job is handed back.
    stall_timeout: float = 30.0
    #: Absolute limit (s) for one job, whatever its progress.
    job_timeout: float = 3600.0
    #: How many times a stalled or service-lost job is retried before it fails.
    max_retries: int = 3
    #: Longest (s) a job moved up to a larger card after running out of GPU memory waits for a
    #: worker with that much VRAM before it fails naming the VRAM tried.
    oom_wait: float = 600.0
    #: ComfyUI: ``POST /free`` before the next job of a worker whose last job ran out of memory.
    comfyui_free_after_oom: bool = False
    #: Warm routing (docs/connectors.md): an idle worker takes jobs of checkpoints it has not loaded
    #: only after this many seconds idle, so one that has them loaded takes them first (0: off).
    warm_grace: float = 2.0
    #: Warm routing: a worker busy with jobs of its loaded checkpoints takes the others again
    #: at its next job after this many seconds, so they do not wait for a busy warm fleet.
    warm_max_wait: float = 30.0
    #: SQLAlchemy URL of the monitor's store.
    monitor_db: str = "sqlite:///jobqueue-monitor.db"
    #: Address the monitor binds to.
    monitor_host: str = "127.0.0.1"
    #: Port the monitor binds to.
    monitor_port: int = Field(5555, ge=0, le=65535)
    #: Bearer token that unlocks the monitor's controls (empty: none).
    monitor_token: str = ""
    #: "user:password" for HTTP basic auth on the monitor's controls (empty: none).
    monitor_basic_auth: str = ""
    #: Serve the monitor without any controls.
    monitor_read_only: bool = False
    #: Worker heartbeat interval (s); the monitor calls a worker offline after 3 missed beats.
    heartbeat_interval: float = 2.0
    #: The monitor keeps at most this many finished jobs (oldest pruned first).
    monitor_keep_jobs: int = 1_000_000
    #: The monitor prunes finished jobs older than this (s).
    monitor_keep_seconds: float = 7 * 24 * 3600.0
    #: How often (s) the monitor reconciles its store with inspect() and the result backend.
    monitor_repair_interval: float = 30.0
    #: How many changes the monitor keeps for websocket clients that reconnect with ?since=.
    monitor_changes_keep: int = 20000
    #: Monitors sharing a PostgreSQL store ("auto": one writes by lease; its seconds; what a standby buffers).
    monitor_standby: Literal["off", "auto"] = "off"
    monitor_lease_seconds: float = Field(default=5.0, gt=0)
    monitor_standby_buffer: int = Field(default=100_000, ge=0)
    #: Where ``jobqueue up`` keeps its state: the embedded Redis's append-only file, the
    #: children's logs, and the run file through which other shells find its broker.
    data_dir: str = "./.jobqueue"
    #: fsspec URL of the output store (``s3://bucket/prefix``...); empty: the local output_dir.
    output_url: str = ""
    #: When > 0, the monitor redirects output downloads to presigned URLs valid this long (s).
    output_presign_seconds: float = 0.0
    #: Standard Webhooks signing secret, ``whsec_<base64>``; empty: webhooks are sent unsigned.
    webhook_secret: str = ""
    #: The queue webhook deliveries go through (every worker consumes it).
    webhook_queue: str = "webhooks"
    #: How many times a webhook delivery is tried before it is given up.
    webhook_max_tries: int = 6
    #: Seconds before the first retry of a webhook delivery; doubled for each further retry.
    webhook_backoff: float = 10.0
    #: Networks (CIDRs) webhook targets may be in besides public addresses (``10.1.2.0/24``): by
    #: default workers refuse loopback, private, link-local, CGNAT, multicast, reserved targets.
    webhook_allowed_networks: tuple[str, ...] = ()
    #: Networks (CIDRs) a ComfyUI job's input image URLs may be in besides public addresses
    #: (same rules as ``webhook_allowed_networks``), e.g. an image server inside the fleet.
    input_allowed_networks: tuple[str, ...] = ()
    #: Values under payload, argument and result keys matching this regular expression
    #: (case-insensitive, anywhere in the key) are shown as "•••" in the monitor, events and logs.
    secret_keys_pattern: str = "password|secret|token|api_key|authorization|cookie"
    #: ComfyUI: longest (s) a prompt may be listed as running with no message at all before the
    #: job counts as stalled (a silent node is not a stall; a server that stops answering is).
    comfyui_node_timeout: float = 600.0
    #: A1111/Forge: longest (s) the WebUI's progress may stay unchanged while it answers before the
    #: job counts as stalled (a WebUI that stops answering is a stall after ``stall_timeout``).
    a1111_node_timeout: float = 600.0
    #: Tags this worker declares (``customer:acme,region:eu``): jobs requiring one run only here.
    worker_tags: tuple[str, ...] = ()
    #: Stable Diffusion WebUI (A1111/Forge) base URL for a worker with no per-GPU entry.
    a1111_url: str = "http://127.0.0.1:7860"
    #: Per-GPU WebUI URLs, e.g. {"gpu0": "http://127.0.0.1:7860"}.
    a1111_urls: Mapping[str, str] = Field(default_factory=dict)
    #: How often (s) long-lived Redis connections check their peer (PING, TCP keepalive); a
    #: dead peer is noticed, and the connection replaced, within about twice this.
    redis_health_interval: float = 10.0
    #: RabbitMQ: AMQP heartbeat (s) of broker connections; a frozen link is dropped after ~2x (0: off).
    broker_heartbeat: float = Field(10.0, ge=0)
    #: Name of the Redis master a ``sentinel://`` broker and result backend follow (Celery's
    #: ``master_name`` transport option); empty: the one in the JOBQUEUE_CELERY_CONFIG module.
    redis_master_name: str = ""
    #: Replicas a job's message and records must reach before ``submit_job()`` returns, and a
    #: job's final state before its message is acked (Redis WAIT); unset: 1 on Sentinel, else 0.
    redis_wait_replicas: int | None = None
    #: Seconds a write waits for those replicas before failing with NotReplicated.
    redis_wait_timeout: float = 2.0
    #: Origins besides the monitor's own that may send controls (e.g. a reverse proxy's
    #: public https://monitor.example); everything else cross-site is refused.
    monitor_allowed_origins: tuple[str, ...] = ()
    #: Path the monitor serves everything under (pages, assets, API, ``/ws``), e.g. ``/flower``.
    monitor_url_prefix: str = ""
    #: Reverse proxies in front of the monitor whose ``X-Forwarded-{For,Proto,Host,Prefix}`` count.
    monitor_proxy_count: int = 0
    #: Seconds after which an offline worker leaves the fleet view and ``/api/workers`` (0: never).
    monitor_hide_offline_after: float = 86400.0
    #: Largest request body the monitor reads (bytes); larger ones are refused with 413.
    monitor_max_body_bytes: int = 1_000_000
    #: Threads of the monitor's web server for HTTP requests (an open dashboard's websocket
    #: holds none: it is served from one asyncio loop).
    monitor_threads: int = 64
    #: Most websockets (open dashboards) the monitor serves at once; one more is closed with 1013.
    monitor_ws_max_sockets: int = 2000
    #: Most websockets one client address may hold open; one more is closed with 1013.
    monitor_ws_max_per_address: int = 100
    #: The monitor refuses (and counts) events whose timestamp is this far (s) from their receipt.
    monitor_event_window: float = 300.0
    #: A busy monitor writer starts a store transaction at most this often (s); an idle one at once.
    monitor_write_interval: float = 0.03
    #: The monitor forgets a job that neither the result backend, a queue nor a worker knows
    #: after this many seconds (ids of forged or long-lost events).
    monitor_unknown_job_expiry: float = 600.0
    #: Let anyone who reaches the monitor read (pages, API, files, ``/ws``, ``/metrics``) while
    #: credentials are configured; controls still need them. Off: every read needs a login too.
    monitor_public_read: bool = False
    #: Bearer token that opens only ``/metrics`` (a Prometheus scraper's); empty: none.
    monitor_metrics_token: str = ""
    #: Serve ``/metrics`` to anyone, credentials or not.
    monitor_metrics_public: bool = False
    #: RabbitMQ's management API (``http://user:pass@host:15672``): the broker page lists every
    #: queue of the vhost with its consumers from it; empty: only the queues the monitor knows.
    rabbitmq_management_url: str = ""
    #: RabbitMQ queues: ``classic``, or ``quorum`` (replicated; no priorities on 3.x: docs/deployment.md).
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    #: Quorum queues: deliveries of one message without an ack before it goes to ``<queue>.dead``.
    rabbitmq_delivery_limit: int = Field(default=20, ge=1)
    #: Key that signs login session cookies; empty: derived from the token and basic-auth
    #: credentials (changing them logs everyone out), or random per process with neither.
    monitor_session_secret: str = ""
    #: How long a login session cookie stays valid (s).
    monitor_session_seconds: float = 12 * 3600.0
    #: Rate limit of job submissions per API key, login or address (Flask-Limiter syntax).
    monitor_rate_submit: str = "600/minute"
    #: Rate limit of controls (cancel, retry, drain, resume, shutdown, keys) per key, login or address.
    monitor_rate_control: str = "600/minute"
    #: Rate limit of login attempts, and of requests with wrong credentials, per address.
    monitor_rate_login: str = "20/minute"
    #: Days the monitor keeps its audit trail (older entries are pruned).
    monitor_audit_keep_days: float = 400.0
    #: Single sign-on (docs/security.md): ``oidc`` (OpenID Connect), ``github`` (OAuth2); empty: off.
    monitor_sso_provider: str = ""
    #: The OIDC issuer URL (or its ``.well-known/openid-configuration`` URL); for ``github``,
    #: the GitHub Enterprise base URL (empty: https://github.com).
    monitor_sso_url: str = ""
    #: The client id and secret the provider issued for the monitor.
    monitor_sso_client_id: str = ""
    monitor_sso_client_secret: str = ""
    #: The login button's label (empty: the provider's kind).
    monitor_sso_name: str = ""
    #: Scopes asked for beyond the kind's own (``openid email profile``; GitHub: ``read:user
    #: user:email``, and ``read:org`` when roles or tenants name groups).
    monitor_sso_scopes: tuple[str, ...] = ()
    #: Emails that may log in (with ``monitor_sso_default_role``).
    monitor_sso_allowed_emails: tuple[str, ...] = ()
    #: Email domains whose users may log in (``*``: any verified email).
    monitor_sso_allowed_domains: tuple[str, ...] = ()
    #: The ID token / userinfo claim that lists a user's groups (GitHub: the user's orgs).
    monitor_sso_groups_claim: str = "groups"
    #: Who gets which role: ``group=role``, ``email=role`` or ``@domain=role``
    #: (``admins=admin,ops=operator``); a match also lets the user in. The strongest match wins.
    monitor_sso_roles: Mapping[str, str] = Field(default_factory=dict)
    #: The role of a permitted user no entry of ``monitor_sso_roles`` matches.
    monitor_sso_default_role: str = "viewer"
    #: The claim that names a user's tenant (empty: none).
    monitor_sso_tenant_claim: str = ""
    #: Tenants of users without that claim: ``email=tenant``, ``@domain=tenant`` or ``group=tenant``.
    monitor_sso_tenants: Mapping[str, str] = Field(default_factory=dict)
    #: The callback URL registered with the provider (``https://monitor.example/auth/callback``
    #: behind a proxy); empty: this request's own ``/auth/callback``.
    monitor_sso_redirect_url: str = ""
    #: Python module of extra Celery settings (message signing, TLS...) loaded on top of
    #: jobqueue's packaged defaults; the other ``JOBQUEUE_*`` settings still win over it.
    celery_config: str = ""
    #: Most jobs of one service that may wait in its queues (None: unbounded); over it,
    #: ``submit_job`` raises ``QueueFull`` and ``POST /api/jobs`` answers 429.
    max_queued: int | None = None
    #: Per-service caps over ``max_queued``: ``comfyui=50,a1111=20``.
    max_queued_by_service: Mapping[str, int] = Field(default_factory=dict)
    #: Per-tenant quotas and fair-share weights: ``acme=queued:100,running:4,weight:2;*=queued:1000``.
    tenant_quotas: str = ""
    #: Tenants' jobs wait in their own queues, taken in weighted turns (off: FIFO per service).
    fair_share: bool = True
    #: A worker exits (warm shutdown, code 0) after this many seconds with no job running or
    #: reserved (0: never): scale to zero.
    exit_when_idle: float = Field(0.0, ge=0)
    #: Grace (s) a SIGTERMed worker gives its running job before handing it back to its queue.
    soft_shutdown_timeout: float = Field(20.0, ge=0)
    #: The monitor the CLI's ``jobs`` and ``workers`` ask (empty: ``jobs`` asks the one at
    #: ``monitor_host:monitor_port``, ``workers`` asks the workers over the broker).
    monitor_url: str = ""
    #: An API key (``jq_...``, viewer role is enough) the CLI's ``jobs`` and ``workers`` send to
    #: the monitor as ``Authorization: Bearer``; empty: ``monitor_token``, when set.
    monitor_api_key: str = ""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from exc

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the keyword arguments: the environment is read by :meth:`from_env` alone, so
        ``Settings(...)`` in a test or a bench is the same wherever it runs."""
        return (init_settings,)

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Turn an environment variable's text into what the field's type validates: lists
        and maps from their comma-separated forms, an empty optional as None, an empty
        boolean as false. Everything else (numbers, booleans) is left to the field's type."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        origin = get_origin(annotation)
        if origin is tuple:
            return _split(value)
        if origin is Mapping:
            return _parse_map(value, ENV_PREFIX + info.field_name.upper())
        text = value.strip()
        if origin in (Union, types.UnionType) and type(None) in get_args(annotation):
            return None if not text else text
        if annotation is bool and not text:
            return False
        return value if annotation is str else text

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``JOBQUEUE_*`` variables (``os.environ`` by default).

        Reading the process environment (``environ`` None) with ``JOBQUEUE_BROKER_URL`` unset,
        the broker (and result backend) of a ``jobqueue up`` running with the same data
        directory is used, so a second shell needs nothing exported (see
        :mod:`jobqueue.up.state`).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = EnvironSource(cls, env)()
        values.update(overrides)
        if environ is None and "broker_url" not in values:
            from jobqueue.up.state import discovered_broker

            data_dir = values.get("data_dir", cls.model_fields["data_dir"].default)
            found = discovered_broker(data_dir)
            values.update({k: v for k, v in found.items() if k not in values})
        settings = cls(**values)
        return settings.resolved()

    def to_env(self) -> dict[str, str]:
        """The ``JOBQUEUE_*`` variables that make :meth:`from_env` rebuild these settings
        (how a parent hands its settings to a child process)."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, Mapping):
                value = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[ENV_PREFIX + name.upper()] = str(value)
        return env

    def resolved(self) -> Settings:
        """Fill in the defaults that depend on other settings or on the host."""
        changes: dict[str, Any] = {}
        if not self.result_backend:
            changes["result_backend"] = default_result_backend(self.broker_url)
        if not self.machine_id:
            changes["machine_id"] = socket.gethostname()
        settings = self.model_copy(update=changes) if changes else self
        settings.check()
        return settings

    def check(self) -> None:
        """Raise :class:`ConfigError` for values that would break the system quietly."""
        for name in ("visibility_timeout", "lease_interval", "health_interval", "status_beat",
                     "stall_timeout", "job_timeout", "heartbeat_interval", "comfyui_node_timeout",
                     "a1111_node_timeout", "redis_health_interval", "redis_wait_timeout", "oom_wait"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"JOBQUEUE_{name.upper()} must be > 0, got {getattr(self, name)!r}")
        # A lease renewed less often than the timeout lets a live job be handed out twice.
        if self.lease_interval * 2 > self.visibility_timeout:
            raise ConfigError(
                f"JOBQUEUE_LEASE_INTERVAL ({self.lease_interval}) must be at most half of "
                f"JOBQUEUE_VISIBILITY_TIMEOUT ({self.visibility_timeout})"
            )
        if self.max_retries < 0 or (self.redis_wait_replicas or 0) < 0:
            raise ConfigError("JOBQUEUE_MAX_RETRIES and JOBQUEUE_REDIS_WAIT_REPLICAS must be >= 0, got "
                              f"{self.max_retries} and {self.redis_wait_replicas}")
        if self.warm_grace < 0 or not self.warm_max_wait > 0:
            raise ConfigError(f"JOBQUEUE_WARM_GRACE must be >= 0 and JOBQUEUE_WARM_MAX_WAIT > 0, got "
                              f"{self.warm_grace!r} and {self.warm_max_wait!r}")
        if self.gpu is not None and self.gpu < 0:
            raise ConfigError(f"JOBQUEUE_GPU must be >= 0, got {self.gpu}")
        if not self.monitor_session_seconds > 0 or not self.monitor_audit_keep_days > 0:
            raise ConfigError("JOBQUEUE_MONITOR_SESSION_SECONDS and JOBQUEUE_MONITOR_AUDIT_KEEP_DAYS must be > 0")
        for name, cidrs in (("WEBHOOK", self.webhook_allowed_networks), ("INPUT", self.input_allowed_networks)):
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError as exc:
                    raise ConfigError(f"JOBQUEUE_{name}_ALLOWED_NETWORKS: {cidr!r} is not a CIDR: {exc}") from None
        try:
            re.compile(self.secret_keys_pattern)
        except re.error as exc:
            raise ConfigError(f"JOBQUEUE_SECRET_KEYS_PATTERN is not a regular expression: {exc}") from None
        self._check_caps()
        self._check_sso()

    def _check_sso(self) -> None:
        """Single sign-on must name its client, and let someone in without letting everyone in."""
        if not self.monitor_sso_provider:
            return
        roles = ("viewer", "operator", "admin")
        if self.monitor_sso_provider not in ("oidc", "github"):
            raise ConfigError(f"JOBQUEUE_MONITOR_SSO_PROVIDER must be oidc or github, got {self.monitor_sso_provider!r}")
        if not self.monitor_sso_client_id or (self.monitor_sso_provider == "oidc" and not self.monitor_sso_url):
            raise ConfigError("single sign-on needs JOBQUEUE_MONITOR_SSO_CLIENT_ID (and, for oidc, JOBQUEUE_MONITOR_SSO_URL)")
        if not (self.monitor_sso_allowed_emails or self.monitor_sso_allowed_domains or self.monitor_sso_roles):
            raise ConfigError("single sign-on lets nobody in: set JOBQUEUE_MONITOR_SSO_ALLOWED_EMAILS, "
                              "..._ALLOWED_DOMAINS (* for any) or ..._ROLES")
        bad = {k: v for k, v in self.monitor_sso_roles.items() if v not in roles}
        if bad or self.monitor_sso_default_role not in roles:
            raise ConfigError(f"JOBQUEUE_MONITOR_SSO_ROLES and ..._DEFAULT_ROLE take {', '.join(roles)}; got "
                              f"{bad or self.monitor_sso_default_role!r}")

    def _check_caps(self) -> None:
        """A cap of 0 or less would refuse every job: surely a mistake, so it is refused."""
        if self.max_queued is not None and self.max_queued < 1:
            raise ConfigError(f"JOBQUEUE_MAX_QUEUED must be >= 1 (unset: unbounded), got {self.max_queued}")
        bad = {s: n for s, n in self.max_queued_by_service.items() if n < 1}
        if bad:
            raise ConfigError(f"JOBQUEUE_MAX_QUEUED_BY_SERVICE caps must be >= 1, got {bad}")
        if not all(map(_QUOTA_ENTRY.fullmatch, self.tenant_quotas.split(";"))):  # see shared/tenants.py
            raise ConfigError(f"JOBQUEUE_TENANT_QUOTAS: expected tenant=queued:N,running:N,weight:N;... (N >= 1), got {self.tenant_quotas!r}")

    def max_queued_for(self, service: str) -> int | None:
        """The cap of ``service``'s queued jobs (None: unbounded)."""
        return self.max_queued_by_service.get(service, self.max_queued)

    def comfyui_url_for(self, gpu: int) -> str:
        """Return the ComfyUI URL a worker on ``gpu`` talks to."""
        return self.comfyui_urls.get(f"gpu{gpu}", self.comfyui_url)

    def a1111_url_for(self, gpu: int) -> str:
        """Return the Stable Diffusion WebUI URL a worker on ``gpu`` talks to."""
        return self.a1111_urls.get(f"gpu{gpu}", self.a1111_url)

    @property
    def is_redis(self) -> bool:
        """True when the broker is Redis (lease and restore apply only there)."""
        return is_redis_url(self.broker_url)

    @property
    def wait_replicas(self) -> int:
        """Replicas a write waits for (``redis_wait_replicas``; unset: 1 when the broker or
        the result backend is a Sentinel group, else 0)."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if is_sentinel_url(self.broker_url) or is_sentinel_url(self.result_backend) else 0


class EnvironSource(PydanticBaseSettingsSource):
    """The ``JOBQUEUE_*`` variables of one environment mapping, as raw text by field name.

    pydantic-settings' own environment source reads only ``os.environ`` and decodes lists as
    JSON; ours reads the mapping it is given (tests pass their own) and leaves the text to
    :meth:`Settings._from_text` and the fields' types.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The raw text of ``field_name``'s variable (None when unset)."""
        return self._environ.get(ENV_PREFIX + field_name.upper()), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            raw, _, _ = self.get_field_value(field, name)
            if raw is not None:
                values[name] = raw
        return values


def _describe(exc: ValidationError) -> str:
    """One line per refused value, naming its variable: ``JOBQUEUE_GPU='first': ...``."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{ENV_PREFIX}{name.upper()}={error['input']!r}: {message}")
    return "; ".join(lines)
