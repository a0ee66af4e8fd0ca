"""Outgoing HTTP to targets a submitter chose: public addresses only (an SSRF guard).

Webhook targets (and input images a ``comfyui`` job names by URL) are URLs that whoever may submit
a job picks, fetched by a worker inside the fleet's network. Without a guard, a job could make
the worker POST to its own loopback, to the cloud metadata address (169.254.169.254) or to any
private service. So every such request goes through :func:`guarded_session`:

* the host is resolved **once** (:attr:`AddressGuard.resolver`); every address of the answer is
  checked, and one refused address refuses the request (:func:`refusal`): loopback, link-local,
  private, shared (CGNAT, 100.64.0.0/10), multicast, reserved, unspecified and anything else
  not globally routable, in IPv4 and IPv6, IPv4 embedded in IPv6 included (``::ffff:127.0.0.1``,
  NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``);
* the socket is then opened to a **checked address**, never to the name: a DNS answer that
  changes between the check and the connection (DNS rebinding) cannot slip through. The
  request still carries the URL's host in its ``Host`` header, and TLS still sends it as SNI
  and verifies the certificate against it (only urllib3's socket opening is replaced);
* redirects are the caller's business (webhooks never follow them), and proxies from the
  environment are not used (the proxy, not the target, would be checked).

``allowed`` networks (``JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS``, ``JOBQUEUE_INPUT_ALLOWED_NETWORKS`` for
input images) open chosen private receivers on purpose. A refused target raises :class:`~jobqueue.errors.TargetRefused`, whose message says
which address was refused and why.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from jobqueue.errors import ConfigError, TargetRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolver(host, port)``: the addresses (text) that ``host`` resolves to.
Resolver = Callable[[str, int], Sequence[str]]
#: ``connect((ip, port), timeout, source_address, socket_options)``: an open socket to ``ip``.
Connector = Callable[[tuple[str, int], Any, Any, Any], socket.socket]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives ``host`` (in its order, without repeats)."""
    seen: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


def numeric_connect(address: tuple[str, int], timeout: Any = None, source_address: Any = None,
                    socket_options: Any = None) -> socket.socket:
    """A TCP socket to ``address``, whose host must be an IP literal (no name lookup happens
    here: ``AI_NUMERICHOST``). ``timeout`` is seconds, None (blocking) or urllib3's default marker."""
    host, port = address
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                                               socket.AI_NUMERICHOST):
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is None or isinstance(timeout, (int, float)):
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"no address for {host}")


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (``10.0.0.0/8``, ``fd00::/8``, ``127.0.0.1``) as networks; :class:`ConfigError`
    names the first malformed one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS: {item!r} is not a CIDR: {exc}") from None
    return tuple(networks)


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, or None for a name. Counts the shorthand IPv4 forms the
    C resolver accepts too (``127.1``, ``0x7f000001``, ``2130706433``)."""
    text = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(part and (part.isdigit() or part.lower().startswith("0x")) for part in text.split(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, NAT64 well-known prefix, 6to4)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _category(ip: IPAddress) -> str | None:
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
              ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
              ("shared address space (CGNAT)", ip in _CGNAT), ("private", ip.is_private),
              ("reserved", ip.is_reserved), ("not globally routable", not ip.is_global))
    return next((name for name, hit in checks if hit), None)


def refusal(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``ip`` may not be a target (``"loopback"``, ``"private"``...), or None when it may:
    a global unicast address, or one inside an ``allowed`` network. An IPv6 address carrying
    an IPv4 one is judged by that IPv4 address too."""
    inner = embedded_ipv4(ip)
    candidates = [ip] if inner is None else [ip, inner]
    if any(c in net for c in candidates for net in allowed if c.version == net.version):
        return None
    if inner is not None:
        reason = _category(inner)
        if reason is not None:
            return f"{reason}: {inner} inside {ip}"
        if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip in _NAT64):
            return None  # the IPv4 address it stands for is public
    return _category(ip)


@dataclass(frozen=True)
class AddressGuard:
    """Which addresses outgoing requests may reach, and how names are resolved and sockets
    opened (both injectable: tests answer DNS themselves and watch the connections)."""

    allowed: tuple[IPNetwork, ...] = ()
    resolver: Resolver = system_resolver
    connect: Connector = numeric_connect
    #: The setting that opens other networks, named in refusals.
    setting: str = "JOBQUEUE_WEBHOOK_ALLOWED_NETWORKS"

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], **kwargs: Any) -> AddressGuard:
        """A guard that allows ``cidrs`` (a setting's text) besides the public addresses."""
        return cls(allowed=parse_networks(cidrs), **kwargs)

    def check_host(self, host: str) -> None:
        """Raise :class:`TargetRefused` when ``host`` is an IP literal that is refused (no
        lookup: names are judged when connecting)."""
        ip = ip_literal(host)
        reason = refusal(ip, self.allowed) if ip is not None else None
        if reason is not None:
            raise TargetRefused(f"{host} is not a public address ({reason}); only public addresses are allowed "
                                f"({self.setting} opens others)", {"address": str(ip), "reason": reason})

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address of ``host``, each checked; :class:`TargetRefused` on the first refused."""
        answers = list(self.resolver(host, port))
        if not answers:
            raise TargetRefused(f"{host} resolves to no address", {"host": host})
        for answer in answers:
            reason = refusal(ipaddress.ip_address(answer), self.allowed)
            if reason is not None:
                raise TargetRefused(f"{host} resolves to {answer}, not a public address ({reason}); only public addresses "
                                    f"are allowed ({self.setting} opens others)",
                                    {"host": host, "address": answer, "reason": reason})
        return answers

    def open(self, host: str, port: int, timeout: Any = None, source_address: Any = None,
             socket_options: Any = None) -> socket.socket:
        """A socket to one of ``host``'s checked addresses (tried in order)."""
        error: OSError | None = None
        for address in self.resolve(host, port):
            try:
                return self.connect((address, port), timeout, source_address, socket_options)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error


class _GuardedConnectionMixin:
    """urllib3's socket opening replaced by :meth:`AddressGuard.open` (everything else, TLS
    with SNI and hostname verification included, is urllib3's own)."""

    guard: AddressGuard

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        try:
            return self.guard.open(conn._dns_host, conn.port, conn.timeout, conn.source_address,
                                   conn.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. "
                                            f"(connect timeout={conn.timeout})") from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections go only where ``guard`` allows."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        self.guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        http = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"guard": self.guard})
        https = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), {"guard": self.guard})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise TargetRefused("guarded requests go straight to their target, never through a proxy",
                            {"proxy": proxy})


def guarded_session(guard: AddressGuard) -> requests.Session:
    """A requests session that reaches only addresses ``guard`` allows (see the module doc).
    Environment proxies are ignored. Close it when done."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
