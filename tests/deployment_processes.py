"""Processes of a deployment test: started in sessions of their own, logged to files, stopped together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_ports(n: int, contiguous: bool = False) -> list[int]:
    """``n`` free local ports; ``contiguous``: a run of ``n`` consecutive ones (PORT, PORT + 1, ...)."""
    if contiguous:
        for _ in range(200):
            first = free_ports(1)[0]
            if first + n < 65536 and all(_free(first + i) for i in range(n)):
                return list(range(first, first + n))
        raise RuntimeError(f"no {n} consecutive free ports")
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pids) -> set[int]:
    """Every live process below ``pids`` (Flower starts some in sessions of their own)."""
    children, found, stack = _children_map(), set(), list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process, its session and everything below it at once: a crash, not a shutdown."""
    below = descendants([process.pid])
    _signal(process.pid, signal.SIGKILL, group=True)
    for pid in below:
        _signal(pid, signal.SIGKILL)
    process.wait(timeout=30)


class Processes:
    """The processes a test starts, each in its own session, logs to files; stopped together."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: list[str], env: dict, cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        try:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=cwd, start_new_session=True)
        finally:
            log.close()
        self.started[name] = process
        return process

    def log(self, name: str, tail: int = 4000) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def report(self, tail: int = 3000) -> str:
        return "\n".join(f"----- {name} (exit {p.poll()}) -----\n{self.log(name, tail)}"
                         for name, p in self.started.items())

    def check_running(self, *names: str) -> None:
        for name in names:
            process = self.started[name]
            assert process.poll() is None, f"{name} exited with {process.returncode}\n{self.report()}"

    def stop(self, grace: float = 10.0) -> set[int]:
        """SIGTERM everything started and below it, then SIGKILL what is left; return survivors."""
        roots = [p.pid for p in self.started.values()]
        extra = descendants(roots)
        for process in self.started.values():
            if process.poll() is None:
                _signal(process.pid, signal.SIGTERM, group=True)
        for pid in extra:
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and (any(p.poll() is None for p in self.started.values())
                                          or any(alive(pid) for pid in extra)):
            time.sleep(0.1)
        extra |= descendants(roots + list(extra))
        for process in self.started.values():
            _signal(process.pid, signal.SIGKILL, group=True)
        for pid in extra:
            if alive(pid):
                _signal(pid, signal.SIGKILL)
        for process in self.started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.2)
        return {pid for pid in extra | set(roots) if alive(pid)}
