"""Wake-ups between processes on one machine: each agent listens on a Unix datagram socket under the launch home.

A submit sends one byte to every agent socket, so an idle agent claims the job at once instead of on its next poll.
Sockets of agents that died are removed by the first sender that finds them refusing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

from .paths import launch_home


def wake_dir(home: Path | None = None) -> Path:
    """The folder of agent sockets for a launch home (``$JUPYTER_LAUNCH_HOME`` by default)."""
    home = home or launch_home()
    # Unix socket paths are limited to ~107 bytes; fall back to /tmp when the home is deep.
    d = home / "wake"
    if len(str(d)) > 80:
        import hashlib

        d = Path("/tmp") / f"jupyter-launch-wake-{hashlib.sha1(str(home).encode()).hexdigest()[:12]}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def wake_agents(home: Path | None = None) -> int:
    """Poke every local agent of this launch home; returns how many were reached."""
    reached = 0
    try:
        entries = list(os.scandir(wake_dir(home)))
    except FileNotFoundError:
        return 0
    if not entries:
        return 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for entry in entries:
            if not entry.name.endswith(".sock"):
                continue
            try:
                s.sendto(b"w", entry.path)
                reached += 1
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except (BlockingIOError, OSError):
                reached += 1  # its buffer is full of wake-ups already: it is awake
    return reached


class WakeListener:
    """An agent's socket; calls ``on_wake`` in the event loop for each datagram."""

    def __init__(self, name: str, on_wake: Callable[[], None], home: Path | None = None):
        self.path = wake_dir(home) / f"{name}.sock"
        self.on_wake = on_wake
        self._sock: socket.socket | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError):
            while self._sock.recv(64):
                pass
        self.on_wake()

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
