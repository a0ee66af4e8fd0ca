"""Webhook targets are public by default (issue 24, point 6): an IP literal outside the public
addresses is refused at submit, a name resolving to one is refused by the delivering worker on
the address it connects to (DNS rebinding included), and JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS
opens a private receiver on purpose.

Receivers are real HTTP(S) servers on loopback; workers are real processes on real Redis.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from jobqueue import submit_job
from jobqueue.config import Settings
from jobqueue.errors import ConfigError, TargetRefused, WebhookTargetRefused
from jobqueue.shared.safe_http import AddressGuard, guarded_session, parse_networks, refusal
from jobqueue.shared.webhooks import check_webhook_url, read_attempts
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app as create_celery_app
from jobqueue.transport.internals import redis_queue_keys
from jobqueue.worker.webhooks import build_delivery, post
from tests.helpers import quick, wait_for
from tests.webhook_receiver import Receiver

#: A globally routable address (example.com's) that the tests never actually reach.
PUBLIC = "93.184.215.14"

REFUSED_LITERALS = [
    "http://127.0.0.1:9871/internal-admin",                 # loopback
    "http://127.1/x",                                       # loopback, shorthand
    "http://2130706433/x",                                  # loopback, one number
    "http://169.254.169.254/latest/meta-data/",             # cloud metadata (link-local)
    "http://10.0.0.5/x", "http://172.16.3.4/x", "http://192.168.1.1/x",  # private
    "http://100.64.0.1/x",                                  # CGNAT
    "http://0.0.0.0:80/x",                                  # unspecified
    "http://224.0.0.1/x",                                   # multicast
    "http://240.0.0.1/x",                                   # reserved
    "http://[::1]:9871/x",                                  # IPv6 loopback
    "http://[fe80::1]/x",                                   # IPv6 link-local
    "http://[fd00::1]/x",                                   # IPv6 unique local (fc00::/7)
    "http://[ff02::1]/x",                                   # IPv6 multicast
    "http://[::ffff:127.0.0.1]/x",                          # IPv4-mapped loopback
    "http://[::ffff:169.254.169.254]/x",                    # IPv4-mapped metadata
    "http://[64:ff9b::a9fe:a9fe]/x",                        # NAT64 of the metadata address
    "http://[2002:7f00:1::]/x",                             # 6to4 of loopback
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(lambda n: 204).start()
    yield started
    started.stop()


# -- the address rules -----------------------------------------------------------------------
@pytest.mark.parametrize("url", REFUSED_LITERALS)
def test_an_ip_literal_target_outside_the_public_addresses_is_refused_at_submit_and_nothing_is_enqueued(
        url: str, app: Any, redis_client: Any) -> None:
    with pytest.raises(WebhookTargetRefused, match="not a public address") as refused:
        submit_job("simulation", quick("x"), webhook_url=url, app=app)
    assert "JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS" in str(refused.value)
    assert sum(redis_client.llen(k) for k in redis_queue_keys("simulation")) == 0


def test_public_addresses_and_names_pass_the_submit_check_and_allowed_networks_open_private_ones() -> None:
    assert check_webhook_url(f"https://{PUBLIC}/hook") == f"https://{PUBLIC}/hook"
    assert check_webhook_url("http://[2606:4700:4700::1111]/h") == "http://[2606:4700:4700::1111]/h"
    assert check_webhook_url("https://hooks.example.com/h") == "https://hooks.example.com/h"
    assert check_webhook_url("http://10.1.2.3:8080/h", ("10.1.2.0/24",)) == "http://10.1.2.3:8080/h"
    with pytest.raises(WebhookTargetRefused):
        check_webhook_url("http://10.1.3.3:8080/h", ("10.1.2.0/24",))
    assert refusal(parse_networks(["::ffff:8.8.8.8"])[0].network_address) is None


def test_the_api_refuses_the_metadata_address_with_400_and_the_reason(tmp_path: Path, redis_url: str) -> None:
    from monitor.app import create_app

    flask_app = create_app(Settings(broker_url=redis_url, monitor_db=f"sqlite:///{tmp_path / 'm.db'}").resolved())
    reply = flask_app.test_client().post("/api/jobs", json={
        "service": "simulation", "payload": quick("x"), "webhook_url": "http://169.254.169.254/latest/meta-data/"})
    assert reply.status_code == 400
    assert "169.254.169.254 is not a public address (link-local)" in reply.get_json()["error"]["message"]


def test_a_malformed_allowed_network_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS"):
        Settings.from_env({"JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8,not-a-net"})
    assert Settings.from_env({"JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8, fd00::/8"}).webhook_allowed_networks \
        == ("10.0.0.0/8", "fd00::/8")


# -- the connection goes to the checked address -------------------------------------------------
class Recorder:
    """An injected resolver and socket opener: what was asked, and what was connected."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []
        self.connects: list[tuple[str, int]] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]

    def connect(self, address: tuple[str, int], *_: Any) -> Any:
        self.connects.append(address)
        raise ConnectionRefusedError(f"test network: {address[0]} not reachable")


def test_dns_rebinding_cannot_reach_loopback_the_connection_goes_to_the_checked_public_address(
        receiver: Receiver) -> None:
    # Given a resolver that answers a public address to the first question and loopback after
    port = receiver.server.server_address[1]  # type: ignore[union-attr]
    dns = Recorder([[PUBLIC], ["127.0.0.1"]])
    guard = AddressGuard(resolver=dns.resolve, connect=dns.connect)
    delivery = build_delivery("j1", f"http://rebind.example:{port}/hooks", JobStatus.COMPLETED, service="simulation",
                              result={"output": 1}, error=None)
    # When the webhook is posted
    status, error = post(delivery, "", guard=guard)
    # Then the name was resolved once, the socket was opened to the checked public address only,
    # and the loopback listener heard nothing
    assert dns.lookups == ["rebind.example"]
    assert dns.connects == [(PUBLIC, port)]
    assert status is None and error is not None and "not reachable" in error
    assert receiver.requests == []


def test_one_refused_address_in_an_answer_refuses_the_target_before_any_connection(receiver: Receiver) -> None:
    port = receiver.server.server_address[1]  # type: ignore[union-attr]
    dns = Recorder([[PUBLIC, "127.0.0.1"]])
    delivery = build_delivery("j1", f"http://mixed.example:{port}/h", JobStatus.COMPLETED, service=None,
                              result=None, error=None)
    with pytest.raises(TargetRefused, match=r"mixed.example resolves to 127.0.0.1, not a public address \(loopback\)"):
        post(delivery, "", guard=AddressGuard(resolver=dns.resolve, connect=dns.connect))
    assert dns.connects == [] and receiver.requests == []


def test_a_checked_address_is_reached_with_the_names_host_header(receiver: Receiver) -> None:
    # An allowed private receiver under a name: the socket goes to the checked address, the
    # request still names the host it was sent to.
    port = receiver.server.server_address[1]  # type: ignore[union-attr]
    guard = AddressGuard(allowed=parse_networks(["127.0.0.1/32"]), resolver=lambda host, p: ["127.0.0.1"])
    delivery = build_delivery("j2", f"http://hooks.internal.example:{port}/h", JobStatus.COMPLETED, service=None,
                              result=None, error=None)
    assert post(delivery, "", guard=guard) == (204, None)
    assert receiver.requests[0].headers["Host"] == f"hooks.internal.example:{port}"


def _tls_server(tmp_path: Path, name: str) -> tuple[http.server.HTTPServer, Path]:
    """An HTTPS server on 127.0.0.1 whose self-signed certificate is for ``name`` only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append(self.headers.get("Host"))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.seen = seen  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, cert_path


def test_tls_to_a_checked_address_still_verifies_the_certificate_for_the_name(tmp_path: Path) -> None:
    # Given an HTTPS receiver whose certificate names hooks.example, reached through its address
    server, cert = _tls_server(tmp_path, "hooks.example")
    port = server.server_address[1]
    guard = AddressGuard(allowed=parse_networks(["127.0.0.1/32"]), resolver=lambda host, p: ["127.0.0.1"])
    try:
        with guarded_session(guard) as session:
            # Then the name the certificate carries is accepted (SNI and verification use the name)
            reply = session.post(f"https://hooks.example:{port}/h", data=b"{}", verify=str(cert), timeout=5)
            assert reply.status_code == 204 and server.seen == [f"hooks.example:{port}"]  # type: ignore[attr-defined]
            # and another name mapped to the same address is refused by certificate verification
            with pytest.raises(requests.exceptions.SSLError):
                session.post(f"https://other.example:{port}/h", data=b"{}", verify=str(cert), timeout=5)
    finally:
        server.shutdown()
        server.server_close()


# -- real workers ---------------------------------------------------------------------------------
def test_a_name_resolving_to_loopback_is_refused_at_delivery_with_the_reason_on_the_job_page(
        app: Any, start_worker: Any, receiver: Receiver, redis_url: str, settings: Settings, tmp_path: Path) -> None:
    # Given a worker with the default rules and a listener on its loopback
    worker = start_worker("gpu0", WEBHOOK_BACKOFF="0.2")
    port = receiver.server.server_address[1]  # type: ignore[union-attr]
    # When a job names it through "localhost" (a name: accepted at submit)
    handle = submit_job("simulation", quick("to loopback"), webhook_url=f"http://localhost:{port}/internal-admin",
                        app=app)
    handle.wait(timeout=30)
    # Then the worker refuses the delivery, gives it up at once, and says why
    wait_for(lambda: "given up after 1 tries" in worker.log_path.read_text(), 30, what="the delivery given up")
    client = redis.Redis.from_url(redis_url)
    attempts = read_attempts(client, handle.id)
    client.close()
    assert len(attempts) == 1 and attempts[0]["refused"] is True and attempts[0]["delivered"] is False
    assert "localhost resolves to" in attempts[0]["error"] and "loopback" in attempts[0]["error"]
    # and the listener heard nothing
    assert receiver.requests == []
    # and the job page's webhook tries show the reason
    from monitor.app import create_app
    from monitor.merge.apply import apply

    flask_app = create_app(settings.model_copy(update={"monitor_db": f"sqlite:///{tmp_path / 'hooks.db'}"}))
    with flask_app.extensions["jobqueue_monitor"].store.write() as tx:
        apply({"type": "task-sent", "uuid": handle.id, "timestamp": time.time(),
               "kwargs": f'{{"service": "simulation", "webhook_url": "http://localhost:{port}/internal-admin"}}'}, tx)
    listed = flask_app.test_client().get(f"/api/jobs/{handle.id}/webhooks").get_json()
    assert listed["attempts"][0]["refused"] is True
    assert "not a public address (loopback)" in listed["attempts"][0]["error"]


def test_allowed_networks_let_a_private_receiver_through_end_to_end(
        start_worker: Any, receiver: Receiver, settings: Settings) -> None:
    # Given a client and a worker that open 127.0.0.1/32 on purpose
    opened = settings.model_copy(update={"webhook_allowed_networks": ("127.0.0.1/32",)})
    client_app = create_celery_app(opened)
    try:
        start_worker("gpu0", WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32")
        # When a job with a loopback webhook completes
        handle = submit_job("simulation", quick("allowed"), webhook_url=receiver.url, app=client_app)
        handle.wait(timeout=30)
        # Then the receiver gets the POST
        wait_for(lambda: receiver.requests and receiver.requests[0].answered == 204, 30, what="the delivery")
        assert f'"id":"{handle.id}"' in receiver.requests[0].body
    finally:
        client_app.close()
