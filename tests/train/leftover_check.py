"""No process outlives the test session: a pytest plugin (tests/conftest.py uses it).

Every process a test starts inherits ``M2DIST_TEST_SESSION=<token>`` from the session's environment, also one
that escapes the process tree (torchrun's workers run in sessions of their own; a killed launcher's orphans are
re-parented to init). When the session ends, after every fixture's teardown, any live process whose environment
carries this session's token is a leftover: the session lists it, kills it (it is this session's own) and fails.
Other sessions on the same host have other tokens and are left alone.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

SESSION_ENV = "M2DIST_TEST_SESSION"


def mark_session() -> str:
    """Give this session a token of its own (every child process inherits it); returns it."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[SESSION_ENV] = token
    return token


# multiprocessing's helpers of this process itself (in-process data prep starts them): they end with it.
_OWN_HELPERS = ("from multiprocessing.resource_tracker import main", "from multiprocessing.forkserver import main")


def _parent_pid(entry: Path) -> int:
    stat = (entry / "stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def session_processes(token: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process but this one (and its own multiprocessing helpers) whose initial
    environment holds ``token``."""
    needle = f"{SESSION_ENV}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if _parent_pid(entry) == os.getpid() and any(h in cmd for h in _OWN_HELPERS):
                continue
        except (OSError, ValueError, IndexError):  # gone, or not ours to read
            continue
        found.append((int(entry.name), cmd))
    return found


def pytest_sessionfinish(session, exitstatus) -> None:
    token = os.environ.get(SESSION_ENV)
    if not token:
        return
    left = session_processes(token)
    if not left:
        return
    lines = [f"  pid {pid}: {cmd[:200]}" for pid, cmd in left]
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = f"tests left {len(left)} process(es) running (killed now):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(text, red=True)
    else:
        print(text)
    session.exitstatus = 1
