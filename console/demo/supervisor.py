"""A small process supervisor for the demo, in the manner of foreman and honcho.

Each child runs in its own session, so its process group holds it and everything it forks
(Celery's pool processes, uvicorn's workers) and a terminal's Ctrl-C reaches only the
supervisor, which then stops the children in the order it chooses: the last started first,
SIGTERM to each whole group, SIGKILL to what is left after a timeout. Each line a child writes
is shown prefixed with its name.

When a child exits on its own, the supervisor says which one and with what code and stops the
others rather than restarting it: the demo runs in the foreground, and a part that crashed
should leave its error as the last thing on the screen, not scroll it away in a restart loop
(a console that fails at start would fail forever). honcho and foreman behave the same way.

Standard library only; nothing here knows about Django or the demo.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# Colours for the name prefixes, as honcho picks them; only used on a terminal.
_COLOURS = ("36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91")
_RESET = "\033[0m"


def describe_exit(code: int) -> str:
    """`exit code 1` or `killed by SIGKILL`, from a Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # Lines matching this are not shown (e.g. the access log of routine heartbeats).
    mute: re.Pattern[str] | None = None
    # Children stop by stage, the highest first, all of one stage together: what depends on
    # another child gets a higher stage (agents flush to the console before it goes).
    stage: int = 0
    # A child that does its job and exits (the demo story): its exit is reported, and the
    # others go on whatever the exit code.
    one_shot: bool = False


class Child:
    def __init__(self, spec: ChildSpec, proc: subprocess.Popen[bytes], colour: str | None) -> None:
        self.spec = spec
        self.proc = proc
        self.colour = colour
        self.reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def group_alive(self) -> bool:
        """Whether any process of the child's group is still running (zombies do not count)."""
        if self.proc.poll() is None:
            return True
        return bool(_live_group_members(self.proc.pid))


class Supervisor:
    """Start children, show their output, and stop every one of them, whatever happens.

    Use it as a context manager: leaving the block (normally, on an exception or on a signal)
    stops all children. `wait()` blocks until a stop is asked for (SIGINT, SIGTERM or
    `request_stop`) or a child exits, and returns the exit status the demo should end with.
    """

    def __init__(
        self,
        *,
        out: TextIO | None = None,
        stop_timeout: float = 10.0,
        name_width: int = 10,
        colour: bool | None = None,
        own_name: str = "demo",
    ) -> None:
        self.out = out or sys.stdout
        self.stop_timeout = stop_timeout
        self.name_width = max(name_width, len(own_name))
        if colour is None:
            colour = self.out.isatty() and "NO_COLOR" not in os.environ
        self.colour = colour
        self.own_name = own_name
        self.children: list[Child] = []
        self._write_lock = threading.Lock()
        self._stop_reason: str | None = None
        self._failed: Child | None = None
        self._finished: set[Child] = set()
        self._kill_now = False
        self._stopped = False
        self._previous_handlers: dict[int, object] = {}

    # --- output ---------------------------------------------------------------------------------

    def write(self, name: str, line: str, colour: str | None = None) -> None:
        stamp = time.strftime("%H:%M:%S")  # local time, as the terminal's reader expects
        prefix = f"{stamp} {name:<{self.name_width}} |"
        if self.colour and colour:
            prefix = f"\033[{colour}m{prefix}{_RESET}"
        with self._write_lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def print_block(self, text: str) -> None:
        """Text shown as it is, without prefixes (the demo's banner)."""
        with self._write_lock:
            self.out.write(text.rstrip("\n") + "\n")
            self.out.flush()

    def log(self, message: str) -> None:
        """A line from the supervisor itself."""
        self.write(self.own_name, message, "1")

    def _pump(self, child: Child) -> None:
        assert child.proc.stdout is not None
        mute = child.spec.mute
        for raw in iter(child.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if mute is not None and mute.search(line):
                continue
            self.write(child.name, line, child.colour)
        child.proc.stdout.close()

    # --- starting -------------------------------------------------------------------------------

    def start(self, spec: ChildSpec) -> Child:
        if self._stop_reason is not None:
            raise RuntimeError(f"not starting {spec.name}: the supervisor is stopping")
        env = {**os.environ, **(spec.env or {})}
        # Children are pipes, not terminals: without this Python would hold lines back.
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            list(spec.argv),
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        colour = _COLOURS[len(self.children) % len(_COLOURS)]
        child = Child(spec, proc, colour)
        self.children.append(child)
        child.reader = threading.Thread(
            target=self._pump, args=(child,), name=f"output of {spec.name}", daemon=True
        )
        child.reader.start()
        self.log(f"started {spec.name} (pid {proc.pid})")
        return child

    # --- watching -------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def check_children(self) -> Child | None:
        """The first child that exited while nobody asked it to; asks the others to stop."""
        if self._failed is None and self._stop_reason is None:
            for child in self.children:
                code = child.proc.poll()
                if code is not None and child.spec.one_shot:
                    if child not in self._finished:
                        self._finished.add(child)
                        self.log(f"{child.name} finished ({describe_exit(code)})")
                    continue
                if code is not None:
                    self._failed = child
                    self.log(
                        f"{child.name} exited unexpectedly ({describe_exit(code)}); "
                        "stopping the others"
                    )
                    self.request_stop(f"{child.name} exited")
                    break
        return self._failed

    def sleep(self, seconds: float, *, step: float = 0.1) -> bool:
        """Sleep while watching the children; False as soon as the supervisor should stop."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_children()
            if self.stopping:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(step, remaining))

    def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.25
    ) -> bool:
        """Poll `predicate` until it holds; False if the supervisor must stop first.

        Raises TimeoutError naming `what` when it does not hold within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.sleep(0):
                return False
            if predicate():
                return True
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
            if not self.sleep(interval):
                return False

    def wait(self, *, interval: float = 0.2) -> int:
        """Block until a stop is asked for or a child dies; stop everything; return 0 or 1."""
        while self.sleep(3600, step=interval):
            pass
        self.stop_all()
        return 1 if self._failed is not None else 0

    # --- signals --------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM ask for a stop; a second one while stopping kills at once."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self._stop_reason is None:
            self._stop_reason = name
        else:
            self._kill_now = True

    # --- stopping -------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every child, each whole process group, by stage. Idempotent."""
        if self._stopped:
            return
        self.request_stop("stopped")
        running = [c for c in self.children if c.group_alive()]
        if running:
            self.log(f"stopping {len(running)} processes ({self._stop_reason})")
        for stage in sorted({c.spec.stage for c in self.children}, reverse=True):
            self._stop_together([c for c in reversed(self.children) if c.spec.stage == stage])
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2)
        self._stopped = True
        if running:
            self.log("all processes stopped")

    def _stop_together(self, children: list[Child]) -> None:
        """SIGTERM to each child itself, so it can stop its own helpers as it means to (a Celery
        worker waits for its pool, which must not be signalled behind its back); then SIGTERM
        to whatever its group still holds, and SIGKILL to anything left after the timeouts."""
        alive = [c for c in children if c.group_alive()]
        for child in alive:
            if self._kill_now:
                _signal_group(child.pid, signal.SIGKILL)
            elif child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while not self._kill_now and time.monotonic() < deadline:
            if all(c.proc.poll() is not None for c in alive):
                break
            time.sleep(0.05)
        late = [c for c in alive if c.proc.poll() is None]
        for child in late:
            why = "asked twice" if self._kill_now else f"not stopped after {self.stop_timeout:g} s"
            self.log(f"killing {child.name} ({why})")
            _signal_group(child.pid, signal.SIGKILL)
        # What a child left behind in its group (its leader has exited): ask, then insist.
        leftover = [c for c in alive if c not in late and c.group_alive()]
        for child in leftover:
            _signal_group(child.pid, signal.SIGTERM)
        _wait_until_gone(leftover, 2.0)
        for child in alive:
            if child.group_alive():
                _signal_group(child.pid, signal.SIGKILL)
        _wait_until_gone(alive, 5.0)
        for child in children:
            code = child.proc.wait()
            if child is not self._failed:
                clean = code in (0, -signal.SIGTERM, -signal.SIGINT)
                self.log(f"{child.name} stopped" + ("" if clean else f" ({describe_exit(code)})"))

    # --- context manager ------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop_all()
        finally:
            self.restore_signal_handlers()


def _wait_until_gone(children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(c.group_alive() for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies.

    A zombie (exited, not yet reaped by its parent) still counts for kill(), and in a container
    whose init does not reap, a killed grandchild can stay one; it runs nothing, so it is done.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        return [pgid]
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]  # no /proc to tell zombies apart: assume the group still runs
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members
