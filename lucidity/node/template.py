"""Workers forked from a pre-imported template process instead of started as fresh interpreters.

Why: a fresh interpreter costs each worker about 60 ms of CPU before it can bind (the interpreter, ZeroMQ,
lucidity's messages), paid again by every worker of a node and by every replacement; on a machine of two
cores that alone kept ``Pool()`` to its first result above 200 ms (issue 13). A fork of a process that has
imported those modules costs a few milliseconds, and its pages are shared until written.

How: the node daemon forks its `WorkerTemplate` once, after its imports and before it creates any ZeroMQ
context (habit 3: nothing socket-shaped crosses a fork), while it is still single-threaded. The template
imports the worker's own modules and then waits on a Unix socket; for each worker the daemon sends the
worker's arguments and environment with two descriptors (the worker's stderr pipe and its readiness pipe),
and the template answers with the worker's pid::

    daemon --(argv, env) + [stderr, ready]--> template --fork--> intermediate --fork--> worker
    daemon <--pid------------------------------ template   (once the intermediate has exited and been reaped)

The intermediate exits at once, so the worker is orphaned and the kernel gives it to the daemon, a
subreaper (`limits.become_subreaper`): the worker is the daemon's child, as a Popen one was, so the daemon
reaps it, reads its exit status and watches it by pidfd (`AdoptedProcess`). The worker waits for a byte
from the template, sent once the intermediate is reaped (so once the worker has its new parent), before it
asks to die with its parent (PR_SET_PDEATHSIG fires when the parent of the moment exits, intermediate
included).

What the worker gets that a fresh interpreter would have given it: its own session and process group,
stdin from /dev/null, stderr to the daemon's pipe, no other descriptor than its readiness pipe, the
environment the daemon chose (``os.environ`` and the C environment; MALLOC_ARENA_MAX through mallopt,
because glibc reads the variable only when a process starts), a command line naming
``lucidity.node.worker``, no logging handlers, none of the daemon's atexit handlers (its own run when it
exits, after its non-daemon threads, as at interpreter exit), and its own multiprocessing authkey. What it
shares with its siblings: the template's pages, copy-on-write, and the string hash seed. What it does not
get: the interpreter's start-up hooks (``sitecustomize``, ``.pth`` files) ran once, in the node daemon with
the daemon's environment, not in each worker with its own. Its memory cap is still set by the worker itself
before any task runs (`lucidity.node.worker.main`).

An embedded cluster's daemon names its caller's main script (``--preload-main``): the template then
forks a child that runs it, and that child, if it ran cleanly, serves the daemon in the template's stead
(`_serve_preloaded`; why and when: `lucidity.node.preload`). The template waits for it, and exits with it.

A process that is not single-threaded (a daemon embedded in a test, say) cannot fork safely, and gets
no template: its workers start as fresh interpreters, as they do with ``LUCIDITY_WORKER_START=exec``.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from typing import IO, NoReturn, Optional

from .processes import Child
from .workerprocess import flush_output

logger = logging.getLogger(__name__)

__all__ = ["WorkerStarter", "WorkerTemplate", "AdoptedProcess", "can_fork", "WORKER_START_VARIABLE", "READY_FD"]

#: Environment variable choosing how a node starts its workers: "fork" (from the template, the default)
#: or "exec" (each a fresh interpreter, ``python -m lucidity.node.worker``).
WORKER_START_VARIABLE = "LUCIDITY_WORKER_START"
#: The descriptor number a forked worker finds its readiness pipe at (stderr is 2, stdin 0).
READY_FD = 3
#: Largest request the template reads (arguments and environment), in bytes.
MAX_REQUEST = 1024 * 1024
#: How long the daemon waits for the template to answer a request or to exit, in seconds.
TEMPLATE_TIMEOUT = 10.0

_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8  # glibc's mallopt parameter for MALLOC_ARENA_MAX


def can_fork() -> bool:
    """Whether this process may fork a template: Linux (subreapers, pidfds), one thread, not disabled."""
    if sys.platform != "linux" or os.environ.get(WORKER_START_VARIABLE, "fork") == "exec":
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1  # ZeroMQ's I/O threads count here, Python's too
    except OSError:
        return False


class WorkerStarter:
    """Starts a node's workers: forked from its template while it lives, else as fresh interpreters.

    Create it where `WorkerTemplate.start` may fork (before any ZeroMQ context); `close` it when the node stops.
    """

    def __init__(self, node: str, preload: Optional[str] = None, memory_limit: Optional[int] = None) -> None:
        self._node = node
        self._template = WorkerTemplate.start(node, preload, memory_limit) if can_fork() else None

    @property
    def pids(self) -> list[int]:
        """The template's pid, if there is one: a child of the daemon that is not a worker."""
        return [] if self._template is None else [self._template.pid]

    def start(self, args: list[str], env: dict[str, str], ready_write: int) -> Child:
        """Start a worker with `args` (all but ``--ready-fd``) and `env`; it writes its address to `ready_write`.

        Raises:
            OSError: the system refused (out of processes, memory or descriptors); the daemon retries later.
        """
        if self._template is not None:
            try:
                return Child(self._template.spawn([*args, "--ready-fd", str(READY_FD)], env, ready_write))
            except OSError as exc:
                if self._template.is_alive():
                    raise
                logger.warning("node %s: the worker template is gone (%s); starting workers as fresh interpreters",
                               self._node, exc)
                self.close()
        argv = [sys.executable, "-m", "lucidity.node.worker", *args, "--ready-fd", str(ready_write)]
        return Child.start(argv, pass_fds=(ready_write,), env=env, capture_stderr=True)

    def close(self) -> None:
        if self._template is not None:
            self._template.close()
            self._template = None


class AdoptedProcess:
    """A worker the daemon adopted from its template: what `processes.Child` needs of a Popen."""

    def __init__(self, pid: int, stderr: IO[bytes]) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None
        self.stdin: Optional[IO[bytes]] = None
        self.stdout: Optional[IO[bytes]] = None
        self.stderr: Optional[IO[bytes]] = stderr

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None  # not ours (yet): cannot happen once the template has answered
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class WorkerTemplate:
    """The daemon's end of its template process: `spawn` a worker, `close` the template."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._broken = False  # it did not answer in time: a late answer would be taken for the next one's

    @classmethod
    def start(cls, node: str, preload: Optional[str] = None, memory_limit: Optional[int] = None) -> "WorkerTemplate":
        """Fork the template of node `node`, which first runs the caller's script that the file `preload`
        holds, if given, for workers capped at `memory_limit` bytes (`lucidity.node.preload`). Call only
        where `can_fork` says so, before any ZeroMQ context."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        flush_output()  # what this process has buffered would otherwise be written again by every worker
        pid = os.fork()
        if pid == 0:
            ours.close()
            _run_template(theirs, parent, node, preload, memory_limit)
        theirs.close()
        return cls(pid, ours)

    def spawn(self, args: list[str], env: dict[str, str], ready_write: int) -> AdoptedProcess:
        """Start a worker with `args` and `env`; it writes its address to `ready_write` (its `READY_FD`).

        Raises:
            OSError: the template is gone or could not fork (the daemon retries, or starts fresh interpreters).
        """
        stderr_read, stderr_write = os.pipe()
        try:
            request = json.dumps({"args": args, "env": env}).encode()
            socket.send_fds(self._sock, [request], [stderr_write, ready_write])
            os.close(stderr_write)
            stderr_write = -1
            if not _readable(self._sock.fileno(), TEMPLATE_TIMEOUT):
                self._broken = True
                os.kill(self.pid, signal.SIGKILL)
                raise TimeoutError(f"the worker template (pid {self.pid}) did not answer in {TEMPLATE_TIMEOUT:.0f} s")
            reply = self._sock.recv(256).decode()
            if not reply:
                raise ConnectionResetError(f"the worker template (pid {self.pid}) exited")
            if not reply.isdigit():
                raise OSError(f"the worker template could not start a worker: {reply}")
        except BaseException:
            os.close(stderr_read)
            if stderr_write >= 0:
                os.close(stderr_write)
            raise
        return AdoptedProcess(int(reply), open(stderr_read, "rb", buffering=0))

    def is_alive(self) -> bool:
        if self._broken:
            return False
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def close(self) -> None:
        """End the template (it exits when its socket closes) and reap it, SIGKILL after `TEMPLATE_TIMEOUT`."""
        self._sock.close()
        deadline = time.monotonic() + TEMPLATE_TIMEOUT
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = -1
        try:
            while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or pidfd < 0:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                _readable(pidfd, remaining)
        except ChildProcessError:
            pass
        finally:
            if pidfd >= 0:
                os.close(pidfd)


# -- the template process ----------------------------------------------------------------------------


def _run_template(sock: socket.socket, daemon: int, node: str, preload: Optional[str],
                  memory_limit: Optional[int]) -> NoReturn:
    """The template's life: leave the daemon's state behind, import the worker, fork workers on request."""
    code = 1
    try:
        _die_with(daemon)
        # A Ctrl-C for the daemon's terminal is the daemon's, and so is a SIGTERM to its process group (its
        # owner stopping it): the template goes when the daemon closes its socket, or dies. Ended by the
        # SIGTERM, it left the daemon, still replacing workers while it stopped, to start them as fresh
        # interpreters and say that the template was gone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.closerange(3, sock.fileno())  # the daemon's pipes to its owner are not ours to hold
        os.closerange(sock.fileno() + 1, _max_fd())
        atexit._clear()  # the daemon's; a worker's own run when it exits
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
        _set_command_line([sys.executable, "-m", "lucidity.node.template", "--of-node", node])
        importlib.import_module(f"{__package__}.worker")  # what every worker imports: once, here
        # A worker names itself as multiprocessing's on its first task (workerprocess.name_process): importing
        # multiprocessing then cost each worker 3 ms of CPU, 64 workers' first map 100 ms of 2 cores (issue 13).
        importlib.import_module("multiprocessing")
        served = _serve_preloaded(sock, daemon, preload, memory_limit) if preload is not None else None
        code = _serve(sock, daemon) if served is None else served
    except BaseException:
        import traceback

        traceback.print_exc()
    os._exit(code)


def _die_with(parent: int) -> None:
    """SIGKILL this process when `parent` exits, and exit now if it already has."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _serve(sock: socket.socket, daemon: int) -> int:
    """Fork a worker for each request of the daemon's, until it closes its end; the exit status."""
    # What the template holds (the worker's modules, a preloaded script's) moves to the collector's permanent
    # generation: a worker's collections then never walk it, and never write its objects' GC headers, which
    # copied every page of them into each of 64 workers as their first tasks began (as Python's gc.freeze
    # documents for fork without exec). A 64-worker cold map lost 15-20 ms stalls to it, in some rounds
    # (first starts 60 against 20 ms).
    gc.freeze()
    while True:
        message, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 2)
        if not message:
            return 0  # the daemon closed its end: it is stopping
        try:
            request = json.loads(message)
            reply = str(_fork_worker(request["args"], request["env"], fds, daemon))
        except (OSError, ValueError, KeyError) as exc:
            reply = f"{type(exc).__name__}: {exc}"
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(reply.encode())


def _serve_preloaded(sock: socket.socket, daemon: int, path: str, memory_limit: Optional[int]) -> Optional[int]:
    """Fork a child that runs the caller's script (`lucidity.node.preload`) and, if that left it fit to fork
    workers from, serves the daemon in this process's stead: then the child's exit status, once it ends.
    None if it could not (the script failed, left a thread or a descriptor, grew past half of the workers'
    `memory_limit`, or took `PRELOAD_TIMEOUT`): this
    process serves, and workers import the script themselves."""
    from .preload import PRELOAD_TIMEOUT, run_main_script

    verdict_read, verdict_write = os.pipe()
    go_read, go_write = os.pipe()  # the child serves only once told to: never after this process gave up on it
    template = os.getpid()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(verdict_read)
            os.close(go_write)
            _die_with(template)
            reason = run_main_script(path, memory_limit)
            os.write(verdict_write, reason.encode(errors="replace")[:512] or b"ok")
            os.close(verdict_write)
            if not reason and os.read(go_read, 1) == b"g":
                code = _serve(sock, daemon)
        except BaseException:
            import traceback

            traceback.print_exc()
        os._exit(code)
    os.close(verdict_write)
    os.close(go_read)
    try:
        verdict = os.read(verdict_read, 1024) if _readable(verdict_read, PRELOAD_TIMEOUT) else b""
        if verdict == b"ok":
            os.write(go_write, b"g")
    finally:
        os.close(verdict_read)
        os.close(go_write)
    if verdict == b"ok":
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return None


def _fork_worker(args: list[str], env: dict[str, str], fds: list[int], daemon: int) -> int:
    """Fork the intermediate, which forks the worker and exits; return the worker's pid once it is the
    daemon's child, and let it go on."""
    if len(fds) != 2:
        raise ValueError(f"a worker needs two descriptors, got {len(fds)}")
    go_read, go_write = os.pipe()
    report_read, report_write = os.pipe()
    try:
        intermediate = os.fork()
    except OSError:
        for fd in (go_read, go_write, report_read, report_write):
            os.close(fd)
        raise
    if intermediate == 0:
        status = 1
        try:
            os.close(go_write)
            os.close(report_read)
            worker = os.fork()
            if worker == 0:
                os.close(report_write)
                _become_worker(args, env, fds, go_read, daemon)
            os.write(report_write, str(worker).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(go_read)
    os.close(report_write)
    try:
        answer = b""
        while True:
            chunk = os.read(report_read, 64)
            if not chunk:
                break
            answer += chunk
        os.waitpid(intermediate, 0)  # from here on the worker's parent is the daemon
        if not answer.isdigit():
            raise OSError("the intermediate process could not fork a worker")
        os.write(go_write, b"g")
        return int(answer)
    finally:
        os.close(report_read)
        os.close(go_write)


def _become_worker(args: list[str], env: dict[str, str], fds: list[int], go_read: int, daemon: int) -> NoReturn:
    """In the new worker: wait to be the daemon's, become a fresh-looking process, run the worker's main."""
    code = 1
    try:
        os.setsid()  # its own session and process group, as Popen's start_new_session gave it
        os.read(go_read, 1)  # reparented to the daemon (or, on EOF, the template died: main checks the parent)
        stderr_write, ready_write = fds
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stderr_write, 2)
        os.dup2(ready_write, READY_FD)
        os.closerange(READY_FD + 1, _max_fd())
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:  # the template's (not a preloaded script's handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        arenas = env.get("MALLOC_ARENA_MAX")
        if arenas and arenas.isdigit():
            import ctypes

            ctypes.CDLL(None).mallopt(_M_ARENA_MAX, int(arenas))
        if "multiprocessing.process" in sys.modules:
            sys.modules["multiprocessing.process"].current_process().authkey = os.urandom(32)
        if "lucidity.node.preload" in sys.modules:  # forked from a template that ran the caller's script
            sys.modules["lucidity.node.preload"].after_fork()
        from . import worker

        sys.argv[:] = [worker.__file__, *args]
        _set_command_line([sys.executable, "-m", "lucidity.node.worker", *args])
        try:
            worker.main(args)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        code = _finish(code)
    except BaseException:
        import traceback

        traceback.print_exc()
    os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    """The status the interpreter would exit with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _finish(code: int) -> int:
    """What interpreter exit does before the process ends: join non-daemon threads, run atexit, flush."""
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:
        pass
    atexit._run_exitfuncs()
    flush_output()
    return code



def _set_command_line(argv: list[str]) -> None:
    """Write `argv` over this process's command line, as ps and /proc/PID/cmdline show it (Linux).

    The forked worker would otherwise show its daemon's (``python -m lucidity node ...``), and tools that
    tell workers from nodes by their command line would count it as a node. The new line is cut to the
    space of the old one. As setproctitle(3) does, its arguments are separated by spaces and the old area's
    last byte is left non-zero: the kernel then shows the line up to its first zero byte (a zero-separated
    line would show the old area's whole length, the rest as empty arguments).
    """
    try:
        import ctypes

        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start and arg_end: fields 48 and 49 of stat(5)
        if end - start < 3:
            return
        line = " ".join(argv).encode(errors="replace")[:end - start - 2]
        ctypes.memset(start, 0, end - start - 1)
        ctypes.memmove(start, line, len(line))
        ctypes.memset(end - 1, ord(" "), 1)
    except (OSError, ValueError, IndexError):
        pass


def _readable(fd: int, timeout: float) -> bool:
    """Whether `fd` became readable within `timeout` seconds (poll: a daemon's descriptors pass 1,024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _max_fd() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 256)
    except (OSError, ValueError):
        return 65536
