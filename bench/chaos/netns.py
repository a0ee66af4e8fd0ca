"""Machines on one host: Linux network namespaces joined by a bridge (root and iproute2 needed).

The host gets a bridge with one address (``host_ip``): the broker, the store and the monitor
listen there. Each :class:`Machine` is a namespace with its own loopback and one veth pair
whose host end is a bridge port; processes started with :meth:`Machine.command` see only
their own loopback and the bridge's subnet, like a separate computer on a LAN.
:meth:`Machine.cut` takes the host end down (packets are dropped, connections stay open on
both sides, exactly like a pulled cable); :meth:`Machine.heal` brings it back.

Only interfaces and namespaces this module created are ever touched; :meth:`Network.close`
removes them all, also after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, or no ``ip`` command)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip <args>`` (bounded); raise with its stderr when ``check`` and it fails."""
    binary = shutil.which("ip") or "/usr/sbin/ip"
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def check_available() -> None:
    """Raise :class:`NetnsUnavailable` unless this process can create namespaces."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    if shutil.which("ip") is None and not os.path.exists("/usr/sbin/ip"):
        raise NetnsUnavailable("the ip command (iproute2) is missing: apt-get install iproute2")


@dataclass
class Machine:
    """One namespace on the bridge."""

    name: str
    address: str
    host_end: str
    ns_end: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this machine."""
        return [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Pull the cable: the machine can reach nothing outside itself."""
        ip("link", "set", self.host_end, "down")

    def heal(self) -> None:
        """Plug it back in."""
        ip("link", "set", self.host_end, "up")


@dataclass
class Network:
    """A bridge on the host and the machines attached to it."""

    subnet: int = field(default_factory=lambda: 100 + os.getpid() % 150)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    machines: list[Machine] = field(default_factory=list)
    bridge: str = ""

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge (where broker, store and monitor listen)."""
        return f"10.231.{self.subnet}.1"

    def open(self) -> Network:
        check_available()
        self.bridge = f"jq{self.tag}br"
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_machine(self) -> Machine:
        """A new namespace with loopback up and one address on the bridge."""
        index = len(self.machines) + 1
        machine = Machine(name=f"jq{self.tag}m{index}", address=f"10.231.{self.subnet}.{10 + index}",
                          host_end=f"jq{self.tag}h{index}", ns_end=f"jq{self.tag}n{index}")
        self.machines.append(machine)
        ip("netns", "add", machine.name)
        ip("link", "add", machine.host_end, "type", "veth", "peer", "name", machine.ns_end)
        ip("link", "set", machine.ns_end, "netns", machine.name)
        ip("link", "set", machine.host_end, "master", self.bridge)
        ip("link", "set", machine.host_end, "up")
        inside = ("netns", "exec", machine.name, shutil.which("ip") or "/usr/sbin/ip")
        ip(*inside, "addr", "add", f"{machine.address}/24", "dev", machine.ns_end)
        ip(*inside, "link", "set", machine.ns_end, "up")
        ip(*inside, "link", "set", "lo", "up")
        return machine

    def close(self) -> None:
        """Delete every namespace, veth pair and the bridge this network made."""
        for machine in self.machines:
            ip("netns", "del", machine.name, check=False)  # takes its veth pair with it
            ip("link", "del", machine.host_end, check=False)
        if self.bridge:
            ip("link", "del", self.bridge, check=False)
