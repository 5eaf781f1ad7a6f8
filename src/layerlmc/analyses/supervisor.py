"""Keeps a private Ray head node alive for as long as the process that started it.

Run as ``python -I supervisor.py PARENT_PID FOLDER COMMAND...`` (standard library only, so it
starts at once and needs nothing from layerlmc): it runs ``COMMAND`` (``ray start --head --block
...``) and, as soon as PARENT_PID closes our stdin (:meth:`PrivateNode.stop`) or is gone (a
``kill -9`` closes the pipe too, and hands us to another parent), ends every process below
itself. Ray's node processes outlive their parent (the dashboard and runtime-env agents are
orphaned, not killed, when the raylet dies), so this process makes itself their subreaper:
orphans of the tree come to it instead of init, and none is missed. Then it removes the node's
FOLDER, unless the node ended by itself while the parent lives, which reads the log there.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
#: how long the node's processes get to exit on SIGTERM before SIGKILL (the raylet and the GCS
#: take a fraction of it; the two agents ignore SIGTERM and wait for the SIGKILL)
GRACE_S = 1.0


def descendants(root: int) -> list[int]:
    """The processes below ``root``, read from /proc (no psutil: it ships inside Ray)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap() -> None:
    """Collect every exited child, orphans handed to us included."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_tree(monitor: int) -> None:
    """SIGTERM to everything below us, then SIGKILL to what is left after the grace time.
    ``monitor`` (``ray start --block``, which only watches the node) gets SIGKILL at once: on
    SIGTERM it would drain the node for 30 s first."""
    me = os.getpid()
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 1.0)):
        for pid in descendants(me):
            try:
                os.kill(pid, signal.SIGKILL if pid == monitor else sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap()
            if not descendants(me):
                return
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    parent, folder, command = int(argv[0]), argv[1], argv[2:]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    stop = []
    # SIGTERM: PrivateNode.stop, also where a forked copy of the driver keeps our stdin open
    # (Ctrl-C does not reach this session)
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    node = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    failed = False  # the node ended by itself: its log in FOLDER says why, for the parent
    try:
        while not stop and os.getppid() == parent:
            if node.poll() is not None:
                failed = True
                break
            readable, _, _ = select.select([sys.stdin], [], [], 0.5)
            if readable and not os.read(sys.stdin.fileno(), 1024):
                break  # the driver closed its end, or died
            reap()
    finally:
        end_tree(node.pid)
        # the parent (PrivateNode.stop) removes the folder too, but it may be gone, or in
        # its exit already: a pipe closes before a dying process is reaped
        if not failed or os.getppid() != parent:
            shutil.rmtree(folder, ignore_errors=True)
    return node.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
