"""Start and stop the live testbed: namespaces, capture, protocol servers and scripted clients.

``start`` leaves the testbed running in the background (for live capture by
quaywatch or anyone else) and records what it started in a state file;
``stop`` ends it. ``running`` is the context manager behind ``run``: it
cleans up on normal exit, exceptions, Ctrl-C and SIGTERM alike, and
``namespaces.destroy`` finds whatever a crash left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from quaywatch.sim.live import namespaces
from quaywatch.sim.live.topology import Topology

STATE_DIRECTORY = Path(os.environ.get("QUAYWATCH_LIVE_STATE", "/run/quaywatch-live"))
STATE_FILE = "state.json"
CAPTURE_READY_SECONDS = 10.0


class TestbedError(RuntimeError):
    """The testbed could not start; everything it had made is removed before this is raised."""


@dataclass(slots=True)
class Peer:
    """One process of the testbed, started in a device's namespace."""

    name: str
    namespace: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None


@dataclass(slots=True)
class Testbed:
    """One running (or startable) testbed."""

    topology: Topology
    capture: Path | None = None
    seed: int = 1
    attacker: bool = True
    interval: float = 0.5
    state_directory: Path = STATE_DIRECTORY
    peers: list[Peer] = field(default_factory=list)
    capture_process: subprocess.Popen[bytes] | None = None

    def peer_commands(self) -> list[Peer]:
        """Servers first, then clients, so that the first polls usually find their server listening."""
        python = [sys.executable, "-m", "quaywatch.sim.live.peer"]
        common = ["--topology", self.topology.path, "--seed", str(self.seed)]
        servers, clients = [], []
        for device in self.topology.devices:
            if device.server:
                command = [*python, "server", device.server, "--device", device.name, *common]
                servers.append(Peer(f"{device.name}.{device.server}", device.namespace, command))
            if device.client and (self.attacker or not device.attack):
                command = [*python, "client", device.client, "--device", device.name, *common]
                command += ["--interval", str(self.interval)]
                clients.append(Peer(f"{device.name}.{device.client}", device.namespace, command))
        return [*servers, *clients]

    def start(self) -> None:
        """Build the network, start the capture (and wait until it records), then the servers and clients."""
        self.state_directory.mkdir(parents=True, exist_ok=True)
        logs = self.state_directory / "logs"
        logs.mkdir(exist_ok=True)
        try:
            namespaces.create(self.topology)
            if self.capture is not None:
                self.capture_process = self._start_capture(self.capture.resolve(), logs / "dumpcap.log")
            self.peers = self.peer_commands()
            for peer in self.peers:
                with (logs / f"{peer.name}.log").open("wb") as log_file:
                    peer.process = subprocess.Popen(
                        ["ip", "netns", "exec", peer.namespace, *peer.command],
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C in the terminal reaches us only; we stop the peers
                    )
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def _start_capture(self, path: Path, log_path: Path) -> subprocess.Popen[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        command = ["ip", "netns", "exec", namespaces.SWITCH, "dumpcap", "-i", self.topology.bridge, "-w", str(path)]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + CAPTURE_READY_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TestbedError(f"dumpcap exited: {log_path.read_text(errors='replace').strip()}")
            if b"Capturing on" in log_path.read_bytes():
                return process
            time.sleep(0.05)
        process.kill()
        raise TestbedError(f"dumpcap did not start capturing within {CAPTURE_READY_SECONDS:.0f} s")

    def _write_state(self) -> None:
        state = {
            "topology": self.topology.path,
            "started": time.time(),
            "capture": str(self.capture.resolve()) if self.capture else None,
            "capture_pid": self.capture_process.pid if self.capture_process else None,
            "peers": {peer.name: peer.process.pid for peer in self.peers if peer.process},
        }
        (self.state_directory / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    def exited_peers(self) -> list[str]:
        """Peers that are no longer running (a server that died is worth telling the user about)."""
        return [peer.name for peer in self.peers if peer.process is not None and peer.process.poll() is not None]

    def stop(self) -> list[str]:
        """Stop clients and servers, let the capture flush, delete the namespaces; returns what was removed."""
        for peer in reversed(self.peers):
            if peer.process is not None and peer.process.poll() is None:
                peer.process.terminate()
        for peer in self.peers:
            if peer.process is not None:
                try:
                    peer.process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    peer.process.kill()
                    peer.process.wait()
        if self.capture_process is not None:
            _stop_capture(self.capture_process.pid, self.capture_process)
        return stop_leftovers(self.state_directory)


def _stop_capture(pid: int, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGINT makes dumpcap write its last block and close the pcapng file cleanly."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


def stop_leftovers(state_directory: Path = STATE_DIRECTORY) -> list[str]:
    """Stop whatever testbed exists, including one started by another process or left by a crash."""
    state_path = state_directory / STATE_FILE
    if state_path.exists():
        try:
            capture_pid = json.loads(state_path.read_text(encoding="utf-8")).get("capture_pid")
        except (OSError, ValueError):
            capture_pid = None
        if capture_pid and capture_pid in _switch_pids():
            _stop_capture(int(capture_pid))
        state_path.unlink(missing_ok=True)
    return namespaces.destroy()


def _switch_pids() -> list[int]:
    return namespaces.namespace_pids(namespaces.SWITCH) if namespaces.SWITCH in namespaces.our_namespaces() else []


def status(state_directory: Path = STATE_DIRECTORY) -> dict[str, Any]:
    """What is running now: namespaces with their processes, and the recorded state of the last start."""
    state: dict[str, Any] = {}
    state_path = state_directory / STATE_FILE
    if state_path.exists():
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(state_path.read_text(encoding="utf-8"))
    found = {name: namespaces.namespace_pids(name) for name in namespaces.our_namespaces()}
    return {"running": bool(found), "namespaces": found, "host_links": namespaces.our_host_links(), "state": state}


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def running(testbed: Testbed) -> Iterator[Testbed]:
    """Run the testbed for the body of the ``with``; always removes it, whatever ends the body."""
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    # Python leaves SIGINT ignored when it was ignored at start-up (a job started in the background of a
    # non-interactive shell, as CI runners do): handle it explicitly so Ctrl-C and `kill -INT` always clean up.
    original_int = signal.signal(signal.SIGINT, _interrupt)
    try:
        testbed.start()
        yield testbed
    finally:
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        try:
            testbed.stop()
        finally:
            signal.signal(signal.SIGINT, original_int if previous_int is _interrupt else previous_int)
            signal.signal(signal.SIGTERM, previous_term)
