"""The live view of a cluster: `lucidity status --watch` and `lucidity top`.

Once a second it asks the cluster for its status (`lucidity.status.query_status`: the control node's list,
then each node's STATUS_REPLY) and redraws one screen: the nodes, their workers with state, current task and
RSS against their cap as a bar, tasks per second, failures by kind and the clients connected.

Two layers, so that the part worth testing needs no terminal:

- reading reports, pure: `RateMeter` turns two reports of the same node into tasks per second (from the
  difference of ``tasks_done``; a restarted node starts a new count), `failures_by_kind` reads what a node
  says failed, and `render` lays one report out as lines of a given width. The dashboard
  (`lucidity.dashboard`) uses the first two as well.
- the terminal, `watch`: the alternate screen, keys without Enter, signals, and restoring the screen
  however the view ends (q, Ctrl-C, SIGTERM, an exception).

Why plain ANSI and not curses: the view only ever redraws a whole screen of text, which takes four escape
sequences (alternate screen, home, clear to end of line, clear below) that every terminal emulator in use
understands; curses would add a terminfo lookup that fails on a missing or odd $TERM (containers, CI),
and its own window state to restore. Bars are ASCII (``[####----]``), so that a terminal without UTF-8
shows them too. What this does not do: colours, scrolling a cluster longer than the screen (the last line
says how many lines were cut), or any input beyond q.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from . import addresses
from .errors import ClusterUnavailable
from .status import query_status

__all__ = ["REFRESH_INTERVAL", "RateMeter", "failures_by_kind", "render", "bar", "watch"]

#: Seconds between two redraws of the live view (and two samples of the dashboard).
REFRESH_INTERVAL = 1.0
#: Characters inside a memory bar's brackets.
BAR_WIDTH = 20
MIB = 2**20

#: Escape sequences: enter and leave the alternate screen, hide and show the cursor, go home, clear the
#: rest of the line, clear the rest of the screen.
ENTER_SCREEN = "\x1b[?1049h\x1b[?25l"
LEAVE_SCREEN = "\x1b[?25h\x1b[?1049l"
HOME = "\x1b[H"
CLEAR_LINE = "\x1b[K"
CLEAR_BELOW = "\x1b[J"

#: Keys that end the view.
QUIT_KEYS = frozenset("qQ")

#: Fields of a node's status that may hold counts of failed tasks by kind, newest convention first. A node
#: daemon of this version reports only ``tasks_crashed`` (every task it failed, whatever the reason).
FAILURE_FIELDS = ("tasks_by_outcome", "failures")
#: Outcomes in such a count that are not failures.
SUCCESS_OUTCOMES = frozenset({"ok", "done", "succeeded"})
#: Fields that may hold a node's limit kills by reason (shown beside the failures when present).
KILL_FIELDS = ("kills_by_reason", "kills")


@dataclass
class _Count:
    instance: str
    tasks_done: int
    at: float


@dataclass
class RateMeter:
    """Tasks per second of each node, from the growth of its ``tasks_done`` between two reports.

    A node is known by name and instance: a node that restarted (new instance) starts a new count rather
    than showing a negative or huge rate, and so does a node seen for the first time (rate 0 until its
    second report).
    """

    _last: dict[str, _Count] = field(default_factory=dict)

    def update(self, report: dict[str, Any], now: float) -> dict[str, float]:
        """The rate of every reachable node in `report`, taken at monotonic time `now`; remembers the counts."""
        rates: dict[str, float] = {}
        seen: dict[str, _Count] = {}
        for node in report.get("nodes", []):
            if "error" in node or "tasks_done" not in node:
                continue
            name, count = str(node["name"]), _Count(str(node.get("instance", "")), int(node["tasks_done"]), now)
            before = self._last.get(name)
            rate = 0.0
            if before is not None and before.instance == count.instance and now > before.at:
                rate = max(0, count.tasks_done - before.tasks_done) / (now - before.at)
            rates[name] = rate
            seen[name] = count
        self._last = seen
        return rates


def _counts(node: dict[str, Any], names: tuple[str, ...]) -> Optional[dict[str, int]]:
    for name in names:
        value = node.get(name)
        if isinstance(value, dict):
            return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}
    return None


def failures_by_kind(node: dict[str, Any]) -> dict[str, int]:
    """What a node says failed, by kind, leaving out kinds at zero.

    Uses the node's counts by outcome when its daemon reports them, else its one count of failed tasks
    (``tasks_crashed``, which counts crashes and limit kills alike), shown as ``failed``.
    """
    by_outcome = _counts(node, FAILURE_FIELDS)
    if by_outcome is not None:
        return {kind: n for kind, n in sorted(by_outcome.items()) if n and kind not in SUCCESS_OUTCOMES}
    failed = int(node.get("tasks_crashed", 0) or 0)
    return {"failed": failed} if failed else {}


def kills_by_reason(node: dict[str, Any]) -> dict[str, int]:
    """A node's limit kills by reason, when its daemon reports them (else empty)."""
    return {reason: n for reason, n in sorted((_counts(node, KILL_FIELDS) or {}).items()) if n}


def bar(used: int, cap: Optional[int], width: int = BAR_WIDTH) -> str:
    """``[#####---------------]`` for `used` bytes of `cap`; blanks inside the brackets without a cap."""
    if not cap:
        return "[" + "no cap".center(width) + "]"
    filled = min(width, round(width * used / cap))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _mib(size: Optional[int]) -> str:
    return "-" if size is None else f"{size / MIB:.1f}"


def _kinds(counts: dict[str, int]) -> str:
    return " ".join(f"{kind} {n}" for kind, n in counts.items())


def render(report: dict[str, Any], rates: dict[str, float], width: int, height: int,
           clock: Optional[str] = None) -> list[str]:
    """One screen of the live view: at most `height` lines, none wider than `width` characters."""
    nodes = sorted(report.get("nodes", []), key=lambda n: str(n.get("name")))  # a stable order to read
    workers = [w for n in nodes for w in n.get("workers", [])]
    busy = sum(1 for w in workers if w.get("state") == "busy")
    total_rate = sum(rates.values())
    stamp = f"  {clock}" if clock else ""
    lines = [f"lucidity top  {report.get('address', '')}  {len(nodes)} node(s)  {len(workers)} worker(s), "
             f"{busy} busy  {total_rate:.1f} tasks/s  clients {report.get('watchers', 0)}{stamp}",
             "q quits", ""]
    for node in nodes:
        if "error" in node:
            lines += [f"NODE {node.get('name')}  {node.get('address')}  UNREACHABLE: {node['error']}", ""]
            continue
        node_busy = sum(1 for w in node["workers"] if w.get("state") == "busy")
        failures = failures_by_kind(node)
        kills = kills_by_reason(node)
        lines.append(f"NODE {node['name']}  {node['address']}  workers {len(node['workers'])}, {node_busy} busy  "
                     f"done {node['tasks_done']}  {rates.get(node['name'], 0.0):.1f} tasks/s  "
                     f"clients {node['clients']}  failures: {_kinds(failures) or 'none'}"
                     + (f"  kills: {_kinds(kills)}" if kills else ""))
        lines.append(f"  {'PID':>7}  {'STATE':<8}  {'TASK':>8}  {'RSS / CAP (MiB)':<{BAR_WIDTH + 18}}  "
                     f"{'PEAK':>8}  {'DONE':>7}")
        for worker in node["workers"]:
            task = "-" if worker.get("task") is None else str(worker["task"])
            memory = f"{bar(worker['rss'], worker.get('cap'))} {_mib(worker['rss'])}/{_mib(worker.get('cap'))}"
            lines.append(f"  {worker['pid']:>7}  {worker['state']:<8}  {task:>8}  {memory:<{BAR_WIDTH + 18}}  "
                         f"{_mib(worker.get('peak', 0)):>8}  {worker['tasks_done']:>7}")
        lines.append("")
    if len(lines) > height:
        cut = len(lines) - (height - 1)
        lines = lines[:height - 1] + [f"... {cut} more line(s); a taller terminal shows them"]
    return [line[:width] for line in lines]


def _unreachable(address: str, error: str, width: int) -> list[str]:
    return [line[:width] for line in (f"lucidity top  {address}", "q quits", "",
                                      f"control node unreachable: {error}", "asking again every second")]


class _Stop(Exception):
    """Raised in the main thread by SIGTERM, so that the screen is restored on the way out."""


def watch(address: str, *, secret: Optional[bytes] = None, timeout: float = REFRESH_INTERVAL,
          interval: float = REFRESH_INTERVAL, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Redraw the live view of the cluster at `address` every `interval` seconds until q, Ctrl-C or SIGTERM.

    Args:
        timeout: seconds to wait for each daemon's answer in one refresh; a node slower than that is shown
            unreachable for that refresh.

    Returns:
        0 once the view ends; the terminal is back as it was (main screen, cursor, line mode).

    Raises:
        ValueError: `address` is not an address.
    """
    addresses.parse(address)  # a typo is said once, on the normal screen
    stdin_fd = stdin.fileno() if stdin.isatty() else None
    saved_mode = None
    if stdin_fd is not None:
        import termios
        import tty

        saved_mode = termios.tcgetattr(stdin_fd)
        tty.setcbreak(stdin_fd)  # keys arrive one by one, unechoed; Ctrl-C still sends SIGINT
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)

    def on_term(signum: int, frame: object) -> None:
        raise _Stop()

    old_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    old_term = signal.signal(signal.SIGTERM, on_term)
    old_winch = signal.signal(signal.SIGWINCH, lambda signum, frame: None)  # wakes the select: redraw now
    meter = RateMeter()
    stdout.write(ENTER_SCREEN)
    try:
        next_refresh = time.monotonic()
        report: Optional[dict[str, Any]] = None
        rates: dict[str, float] = {}
        error = ""
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                try:
                    report, error = query_status(address, timeout, secret), ""
                    rates = meter.update(report, time.monotonic())
                except ClusterUnavailable as exc:
                    report, error = None, str(exc)
                next_refresh = max(next_refresh + interval, time.monotonic())
            size = shutil.get_terminal_size()
            lines = (render(report, rates, size.columns, size.lines, time.strftime("%H:%M:%S"))
                     if report is not None else _unreachable(address, error, size.columns))
            stdout.write(HOME + "\n".join(line + CLEAR_LINE for line in lines) + CLEAR_BELOW)
            stdout.flush()
            waiting = [wake_read] + ([stdin_fd] if stdin_fd is not None else [])
            ready, _, _ = select.select(waiting, [], [], max(0.0, next_refresh - time.monotonic()))
            if wake_read in ready:
                _drain(wake_read)
            if stdin_fd is not None and stdin_fd in ready:
                keys = os.read(stdin_fd, 64).decode(errors="replace")
                if not keys or QUIT_KEYS.intersection(keys):
                    return 0
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        stdout.write(LEAVE_SCREEN)
        stdout.flush()
        if saved_mode is not None and stdin_fd is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_mode)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_read)
        os.close(wake_write)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
