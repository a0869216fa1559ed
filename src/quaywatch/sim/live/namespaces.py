"""Create and destroy the testbed's network namespaces, bridge and veth pairs.

Everything the testbed makes is named with the ``qw-`` prefix, so cleanup
finds exactly ours and nothing else. The bridge lives in its own namespace
(``qw-switch``), never in the host's: the host keeps its firewall and
bridge-netfilter settings untouched, and deleting the namespaces removes
every link with them, even after a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from quaywatch.sim.live.topology import PREFIX, Topology

SWITCH = f"{PREFIX}switch"


class NamespaceError(RuntimeError):
    """An ``ip`` command failed; the message carries the command and its error output."""


def ip(*arguments: str, check: bool = True) -> str:
    """Run one ``ip`` command and return its output."""
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NamespaceError(f"ip {' '.join(arguments)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def available() -> str | None:
    """Why the testbed cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the live testbed needs root (it creates network namespaces)"
    try:
        ip("netns", "list")
    except (OSError, NamespaceError) as error:
        return f"'ip netns' is unavailable: {error}"
    return None


def our_namespaces() -> list[str]:
    """Names of the existing namespaces that the testbed made."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(PREFIX))


def our_host_links() -> list[str]:
    """``qw-`` links in the host namespace: none in normal operation, but a crash while moving one could leave it."""
    links = []
    for line in ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(PREFIX):
                links.append(name)
    return links


def namespace_pids(namespace: str) -> list[int]:
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).split() if pid.isdigit()]


@dataclass(frozen=True, slots=True)
class Link:
    """One device's cable: ``eth0`` in its namespace, ``qw-p<n>`` on the bridge."""

    namespace: str
    port: str


def create(topology: Topology) -> list[Link]:
    """Build the switch and one namespace per device; any existing testbed is removed first (idempotent)."""
    destroy()
    prefix_length = topology.subnet.prefixlen
    ip("netns", "add", SWITCH)
    ip("-n", SWITCH, "link", "set", "lo", "up")
    ip("-n", SWITCH, "link", "add", topology.bridge, "type", "bridge")
    ip("-n", SWITCH, "link", "set", topology.bridge, "up")
    links = []
    for index, device in enumerate(topology.devices):
        port = f"{PREFIX}p{index}"
        ip("netns", "add", device.namespace)
        ip("-n", device.namespace, "link", "set", "lo", "up")
        # Made directly inside the two namespaces: no end ever appears in the host's.
        ip("link", "add", "eth0", "netns", device.namespace, "type", "veth", "peer", "name", port, "netns", SWITCH)
        ip("-n", device.namespace, "link", "set", "eth0", "address", device.mac)
        ip("-n", device.namespace, "address", "add", f"{device.address}/{prefix_length}", "dev", "eth0")
        ip("-n", device.namespace, "link", "set", "eth0", "up")
        ip("-n", SWITCH, "link", "set", port, "master", topology.bridge)
        ip("-n", SWITCH, "link", "set", port, "up")
        links.append(Link(device.namespace, port))
    return links


def destroy(grace_seconds: float = 3.0) -> list[str]:
    """Stop every process left in a ``qw-`` namespace, then delete the namespaces and any ``qw-`` host link.

    Returns what was removed. Safe to call when nothing exists.
    """
    namespaces = our_namespaces()
    pids = {pid for namespace in namespaces for pid in namespace_pids(namespace)}
    _terminate(pids, grace_seconds)
    for namespace in namespaces:
        ip("netns", "delete", namespace, check=False)
    links = our_host_links()
    for link in links:
        ip("link", "delete", link, check=False)
    return [*namespaces, *links]


def _terminate(pids: set[int], grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL whoever is still alive after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        remaining = set()
        for pid in pids:
            try:
                os.kill(pid, sig)
                remaining.add(pid)
            except ProcessLookupError:
                pass
        if not remaining or sig == signal.SIGKILL:
            return
        deadline = time.monotonic() + grace_seconds
        while remaining and time.monotonic() < deadline:
            remaining = {pid for pid in remaining if alive(pid)}
            time.sleep(0.05)
        pids = remaining


def alive(pid: int) -> bool:
    try:
        waited, _status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); /proc tells it apart.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
