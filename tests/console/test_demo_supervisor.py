"""The demo's process supervisor starts children, shows their output by name, and leaves no
process behind: not on a stop, not when a child dies, not on Ctrl-C, not when a child ignores
SIGTERM or forks helpers of its own."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.demo.supervisor import ChildSpec, Supervisor

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for an init that does not reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def wait_for_line(out: io.StringIO, pattern: str, timeout: float = 10) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, out.getvalue())
        if match:
            return match
        time.sleep(0.02)
    raise AssertionError(f"no line matching {pattern!r} in:\n{out.getvalue()}")


@pytest.fixture
def out():
    return io.StringIO()


def test_it_starts_children_and_stops_every_one(out):
    with Supervisor(out=out, stop_timeout=5) as supervisor:
        first = supervisor.start(ChildSpec("one", SLEEPER))
        second = supervisor.start(ChildSpec("two", SLEEPER, stage=1))
        assert not gone(first.pid) and not gone(second.pid)

    for pid in (first.pid, second.pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "two stopped" in out.getvalue()
    # The later stage stops first.
    assert out.getvalue().index("two stopped") < out.getvalue().index("one stopped")


def test_each_line_is_shown_with_the_name_of_its_child(out):
    printer = [sys.executable, "-c", "print('hello'); print('noise 42'); print('bye')"]
    with Supervisor(out=out, name_width=8) as supervisor:
        supervisor.start(ChildSpec("printer", printer, mute=re.compile(r"^noise \d+$")))
        wait_for_line(out, r"printer\s+\| bye")

    assert re.search(r"^\d\d:\d\d:\d\d printer  \| hello$", out.getvalue(), re.MULTILINE)
    assert "noise" not in out.getvalue()


def test_helpers_a_child_forked_are_stopped_with_it(out):
    forker = [
        sys.executable,
        "-c",
        (
            "import subprocess, sys, time;"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print('helper', p.pid, flush=True); time.sleep(60)"
        ),
    ]
    with Supervisor(out=out, stop_timeout=5) as supervisor:
        child = supervisor.start(ChildSpec("forker", forker))
        helper = int(wait_for_line(out, r"helper (\d+)").group(1))

    assert gone(child.pid)
    assert gone(helper)


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(out):
    stubborn = [
        sys.executable,
        "-c",
        (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "print('ready', flush=True); time.sleep(60)"
        ),
    ]
    with Supervisor(out=out, stop_timeout=0.5) as supervisor:
        child = supervisor.start(ChildSpec("stubborn", stubborn))
        wait_for_line(out, "ready")
        started = time.monotonic()

    assert time.monotonic() - started < 5
    assert gone(child.pid)
    assert "killing stubborn (not stopped after 0.5 s)" in out.getvalue()
    assert "stubborn stopped (killed by SIGKILL)" in out.getvalue()


def test_a_child_that_dies_is_named_with_its_exit_code_and_the_rest_stop(out):
    crasher = [sys.executable, "-c", "import time, sys; time.sleep(0.3); sys.exit(3)"]
    with Supervisor(out=out, stop_timeout=5) as supervisor:
        sleeper = supervisor.start(ChildSpec("sleeper", SLEEPER))
        supervisor.start(ChildSpec("crasher", crasher))
        started = time.monotonic()
        status = supervisor.wait()

    assert status == 1
    assert time.monotonic() - started < 5
    assert "crasher exited unexpectedly (exit code 3); stopping the others" in out.getvalue()
    assert gone(sleeper.pid)


def test_a_one_shot_child_finishing_leaves_the_others_running(out):
    story = [sys.executable, "-c", "import sys; sys.exit(2)"]
    with Supervisor(out=out, stop_timeout=5) as supervisor:
        sleeper = supervisor.start(ChildSpec("sleeper", SLEEPER))
        supervisor.start(ChildSpec("story", story, one_shot=True))
        assert supervisor.sleep(1.0)  # the supervisor's own loop, which looks at children
        assert "story finished (exit code 2)" in out.getvalue()
        assert supervisor.check_children() is None
        assert not gone(sleeper.pid)
    assert gone(sleeper.pid)


SUPERVISED = """
import sys
sys.path.insert(0, "console/demo")
from supervisor import ChildSpec, Supervisor

supervisor = Supervisor(stop_timeout=5)
supervisor.install_signal_handlers()
with supervisor:
    for name in ("one", "two"):
        child = supervisor.start(ChildSpec(name, [sys.executable, "-c", "import time; time.sleep(60)"]))
        print("pid", child.pid, flush=True)
    status = supervisor.wait()
sys.exit(status)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_supervisor_stops_every_child(signum):
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISED], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    pids = []
    while len(pids) < 2:
        line = process.stdout.readline()
        assert line, "the supervisor ended before starting its children"
        if line.startswith("pid "):
            pids.append(int(line.split()[1]))

    process.send_signal(signum)
    rest, _ = process.communicate(timeout=20)

    assert process.returncode == 0
    assert f"stopping 2 processes ({signal.Signals(signum).name})" in rest
    for pid in pids:
        assert gone(pid)
