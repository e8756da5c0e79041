"""Every Python and shell example in docs/ runs, and prints what the page shows.

Each page (docs/**/*.md, so pages added later are picked up) is one test. Its examples run top to bottom in
a fresh directory of their own, as a reader following the page would run them. The convention:

- A ```python block is a complete program. It is saved and run as a script (``python example_LINE.py``)
  in the page's directory and must exit 0. If the next block (with nothing but blank lines, or a lone
  ``<div ...>``/``</div>`` line, between) is a plain ``` (or ```text / ```output) block, that block is the
  program's stdout, compared line by line. Fences may carry attributes (```python title="lucidity"``), and
  a side-by-side ``<div class="grid" markdown>`` of two programs runs both, the output going with the second.
- ``<!-- file: NAME -->`` on a line of its own just above a ```python block saves it as NAME instead of
  running it: a module the next examples import, or a script a console block runs (``$ python NAME``).
- A console block is a plain block (or ```console) whose lines start with ``$ `` for a command; the lines
  between commands are what the commands print, stdout and stderr together, as a terminal shows them. The
  commands run in one bash, in order (so ``cd``, ``export`` and ``echo $?`` work), in the page's directory,
  with the dev venv's ``python`` and ``lucidity`` first on PATH and LUCIDITY_ADDRESS unset. A command
  ``$ lucidity control|node ... &`` starts a daemon of the page as below; the log lines shown after it are
  not compared.
- A ```sh block without ``$`` is a list of commands. ``lucidity control ... &`` and ``lucidity node ... &``
  start daemons through tests/helpers.CliCluster (stopped, by pid, when the page ends; ``kill %N`` in a
  later console block stops the N-th daemon the page started), and the test waits until each node is in
  ``lucidity status`` before it starts the next (so status lists them in the page's order). Other lines run in bash like console commands, their output unchecked.
- ``cd`` carries over from one block to the next, as in a terminal. A directory the page changes into
  (``cd /tmp/NAME``) is made inside the page's directory and swapped back in the output, like ports, and
  ``<!-- file: /tmp/NAME/mod.py -->`` writes there.
- Every ``tcp://127.0.0.1:PORT`` and every bare ``:PORT`` of such an address that a daemon of the page
  binds is replaced by a free port when the examples run, and replaced back in what they print, so pages
  keep readable fixed ports while tests run side by side (`lucidity control` with no ``--bind`` binds
  tcp://127.0.0.1:3030).
- An example that cannot run here (a fly.io account, systemd, docker, a package install) says so on a line
  of its own just above its block: ``*Not run by the docs tests: REASON.*`` (shown to readers, in italics).
  For such a block the test still checks what it can: Python must compile, and every shell line that runs
  ``lucidity`` must be accepted by the real command-line parser (lucidity.cli's argparse).
- Other plain blocks (diagrams, synopses, log excerpts, an example's stderr) are prose and are not run.
- An example that fails because of a product bug is listed in KNOWN_PRODUCT_BUGS (strict xfail), and a
  page others are still converting in PENDING_PAGES; both lists are meant to be empty.

Pages run a few at a time (CONCURRENT_PAGES) in one module fixture; each page's test reports its outcome.

Placeholders in expected output, for what varies between runs (pids, times, temporary paths, how tasks
divide): ``...`` inside a line matches any text within that line (shortest first), and a line that is only
``...`` matches any number of whole lines, none included. Nothing else is a placeholder, and trailing spaces
are ignored. Keep placeholders narrow: ``worker ... on node local``, not ``...``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
from typing import Any, Optional

import pytest

from helpers import CliCluster, free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
#: Seconds one example may run; the longest here takes about 7 s.
EXAMPLE_TIMEOUT = 60.0
DEFAULT_CONTROL = "tcp://127.0.0.1:3030"
NOT_RUN = re.compile(r"^\*Not run by the docs tests: (.+)\*$")
FILE = re.compile(r"^<!-- file: (\S+) -->$")
FENCE = re.compile(r"^(\s*)```(\w*)(?:\s+[^`]*)?$")  # ```python title="lucidity" has attributes
#: Lines that stand between two blocks without separating them: blank, or a lone HTML tag (a side-by-side grid).
BETWEEN = re.compile(r"^\s*(?:</?div[^>]*>)?\s*$")
OUTPUT_LANGS = {"", "text", "output", "console"}
SHELL_LANGS = {"sh", "bash", "shell"}
ADDRESS = re.compile(r"tcp://127\.0\.0\.1:(\d+)")
#: A directory a page changes into: ``cd /tmp/NAME``.
FIXED_DIRECTORY = re.compile(r"\bcd (/tmp/[\w.-]+)")


@dataclasses.dataclass
class Block:
    """One fenced block of a page, with the marks on the lines just above it."""

    page: pathlib.Path
    line: int  # of the opening fence, counted from 1
    lang: str
    lines: list[str]
    not_run: Optional[str] = None
    file: Optional[str] = None
    follows_block: bool = False  # only blank lines between this block and the previous one

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_console(self) -> bool:
        return self.lang in OUTPUT_LANGS and bool(self.lines) and self.lines[0].startswith("$ ")


def parse(page: pathlib.Path) -> list[Block]:
    lines = page.read_text().split("\n")
    blocks: list[Block] = []
    i, last_end = 0, -2
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, end = len(fence.group(1)), i + 1
        while not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        block = Block(page, i + 1, fence.group(2), [line[indent:] for line in lines[i + 1:end]])
        block.follows_block = all(BETWEEN.match(line) for line in lines[last_end + 1:i])
        above = i - 1
        while above > last_end:  # the paragraphs just above: marks, or the prose that ends the search
            if BETWEEN.match(lines[above]):
                above -= 1
                continue
            top = above
            while top - 1 > last_end and not BETWEEN.match(lines[top - 1]):
                top -= 1
            text = " ".join(line.strip() for line in lines[top:above + 1])
            if (m := NOT_RUN.match(text)) is not None:
                block.not_run = m.group(1)
            elif (m := FILE.match(text)) is not None:
                block.file = m.group(1)
            else:
                break
            above = top - 1
        blocks.append(block)
        last_end = i = end
        i += 1
    return blocks


def expected_pattern(expected: list[str]) -> re.Pattern[str]:
    """The regular expression an output must match in full; the placeholders are in the module docstring."""
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*?".join(re.escape(piece) for piece in line.rstrip().split("...")) + r"\n")
    return re.compile("".join(parts))


def check_output(block: Block, expected: list[str], actual: str, stderr: str = "") -> None:
    actual = "".join(line.rstrip() + "\n" for line in actual.rstrip("\n").split("\n")) if actual.strip() else ""
    expected = [line for line in expected]
    while expected and not expected[-1].strip():
        expected.pop()
    if not expected_pattern(expected).fullmatch(actual):
        pytest.fail(f"{block.where}: the output differs from the page.\n--- the page shows:\n"
                    + "\n".join(expected) + f"\n--- the example printed:\n{actual}"
                    + (f"--- and on stderr:\n{stderr}" if stderr else ""), pytrace=False)


def check_parses(block: Block) -> None:
    """What a block that is not run must still get right: Python compiles, lucidity command lines parse."""
    from lucidity.cli import _parser  # the CLI's own parser: what `lucidity` itself would accept

    if block.lang in ("python", "py"):
        compile("\n".join(block.lines), block.where, "exec")
        return
    def check(words: list[str], text: str) -> None:
        while words and ("=" in words[0] or words[0] in ("timeout", "sudo", "exec") or words[0].isdigit()):
            words.pop(0)
        if words and os.path.basename(words[0]) == "lucidity":
            try:
                _parser().parse_args(words[1:])
            except SystemExit as exit:
                if exit.code not in (0, None):
                    pytest.fail(f"{block.where}: `{text}` is refused by the lucidity CLI's parser", pytrace=False)
        for word in words:  # a command handed to another one: fly ssh console -C "lucidity fly nodes ..."
            if word.startswith("lucidity "):
                check(shlex.split(word), word)

    text = "\n".join(line[2:] if line.startswith("$ ") else line for line in block.lines if not line.startswith("#"))
    for command in text.replace("\\\n", " ").split("\n"):
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in (";", "&", "&&", "|", "||", "(", ")"):
                check(words, " ".join(words))
                words = []
            else:
                words.append(token)


class PageRun:
    """The state a page's examples share: their directory, the daemons started, the addresses replaced."""

    def __init__(self, directory: pathlib.Path, text: str = "") -> None:
        self.directory = directory
        self.cwd = directory  # where the next command runs: `cd` in a session moves it, as in a terminal
        self.cluster = CliCluster()
        self.cluster.cwd = str(directory)  # relative paths in daemon command lines (--secret-file) are the page's
        # Fixed directories a page works in (`cd /tmp/shipdemo`) live in the page's directory instead.
        self.paths = {fixed: str(directory / fixed.strip("/").replace("/", "_"))
                      for fixed in sorted(set(FIXED_DIRECTORY.findall(text)), key=len, reverse=True)}
        for real in self.paths.values():
            os.makedirs(real, exist_ok=True)
        self.cluster.log_dir = str(directory)  # the daemons' logs, kept out of the test's output
        self.daemons: list[str] = []  # keys of self.cluster.processes, in the order the page started them
        self.ports: dict[str, str] = {}  # documented port -> the free port used instead
        self.nodes = 0
        bin_dir = os.path.dirname(sys.executable)
        self.env = dict(self.cluster.env, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
        self.env.pop("LUCIDITY_ADDRESS", None)

    def localize(self, text: str) -> str:
        """The page's text with its documented ports replaced by the ports this run uses."""
        for documented, real in self.ports.items():
            text = re.sub(rf"(?<=127\.0\.0\.1:){documented}\b", real, text)
        for fixed, real in self.paths.items():
            text = re.sub(rf"{re.escape(fixed)}\b", real, text)
        return text

    def documented(self, text: str) -> str:
        for documented, real in self.ports.items():
            text = re.sub(rf"(?<=127\.0\.0\.1:){real}\b", documented, text)
        for fixed, real in self.paths.items():
            text = text.replace(real, fixed)
        return text

    def claim_ports(self, text: str) -> None:
        for port in ADDRESS.findall(text):
            self.ports.setdefault(port, str(free_port()))

    def run_python(self, block: Block, output: Optional[Block]) -> None:
        name = self.cwd / self.localize(block.file or f"example_{block.line}.py")  # an absolute file stays so
        source = self.localize("\n".join(block.lines)) + "\n"
        compile(source, block.where, "exec")
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_text(source)
        if block.file:
            return
        done = subprocess.run([sys.executable, str(name)], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=EXAMPLE_TIMEOUT)
        if done.returncode != 0:
            pytest.fail(f"{block.where}: the example exited with {done.returncode}\n{done.stdout}\n{done.stderr}",
                        pytrace=False)
        if output is not None:
            check_output(block, output.lines, self.documented(done.stdout), done.stderr)

    def run_console(self, block: Block) -> None:
        commands: list[str] = []
        expected: list[str] = []
        in_daemon_log = False
        for line in [*block.lines, "$ "]:
            if not line.startswith("$ "):
                if not in_daemon_log:
                    expected.append(line)
                continue
            command = line[2:].split(" #")[0].strip()
            words = shlex.split(command.rstrip("&"))
            in_daemon_log = (command.endswith("&") and words[:1] == ["lucidity"]
                             and words[1:2] in (["control"], ["node"]))
            if in_daemon_log or line == "$ ":  # a daemon of the page's (its log is not compared), or the end
                if commands:
                    output = self.bash("exec 2>&1\n" + "\n".join(commands))
                    check_output(block, expected, self.documented(output))
                commands, expected = [], []
                if in_daemon_log:
                    self.cluster.cwd = str(self.cwd)
                    self.start_daemon(words[1:])
                    if words[1] == "node":
                        self.cluster.wait_for(self.nodes, secret=self.secret(words))
                continue
            command = re.sub(r"%(\d+)", lambda m: str(self.cluster.processes[self.daemons[int(m.group(1)) - 1]].pid),
                             line[2:])
            commands.append(self.localize(command))

    def secret(self, words: list[str]) -> Optional[bytes]:
        """The secret a daemon's command line names, to ask its cluster's status with."""
        if "--secret-file" not in words:
            return None
        from lucidity.security import load_secret
        return load_secret(secret_file=str(self.cwd / words[words.index("--secret-file") + 1]))

    def run_commands(self, block: Block) -> None:
        for line in block.lines:
            command = line.split(" #")[0].strip()
            if not command:
                continue
            words = shlex.split(command.rstrip("&"))
            if command.endswith("&") and words[:1] == ["lucidity"] and words[1] in ("control", "node"):
                self.cluster.cwd = str(self.cwd)
                self.start_daemon(words[1:])
                if words[1] == "node":  # in the cluster before the next starts, as when typed: status lists join order
                    self.cluster.wait_for(self.nodes, secret=self.secret(words))
                continue
            self.bash(self.localize(command), check=True)

    def bash(self, script: str, check: bool = False) -> str:
        """Run `script` in a bash of its own process group, and end whatever it left running; its stdout.

        The directory bash ends in is where the page's next command runs (a `cd` carries over)."""
        where = self.directory / ".docs-test-cwd"
        script = f"{script}\nstatus=$?; pwd > {shlex.quote(str(where))}; exit $status"
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=EXAMPLE_TIMEOUT)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a command sent to the background outlives bash
            except ProcessLookupError:
                pass
            proc.wait()
        if where.exists():
            self.cwd = pathlib.Path(where.read_text().strip())
        if check and proc.returncode != 0:
            pytest.fail(f"`{script}` exited with {proc.returncode}:\n{out}{err}", pytrace=False)
        return out

    def start_daemon(self, args: list[str]) -> None:
        if args[0] == "control" and "--bind" not in args:
            args = [*args, "--bind", DEFAULT_CONTROL]
        self.claim_ports(" ".join(args))
        args = [self.localize(arg) for arg in args]
        key = f"{args[0]}-{len(self.daemons) + 1}"
        self.cluster._start(key, *args)  # helpers' documented way to start a daemon with any command line
        self.daemons.append(key)
        if args[0] == "control":  # the nodes that follow join this one
            self.cluster.address = args[args.index("--bind") + 1]
            self.nodes = 0
        else:
            self.nodes += 1


#: Examples that fail because of a product bug, reported and not yet fixed: (page, a line of the example)
#: -> the bug. Such an example must fail (xfail, strict): once the bug is fixed, delete its entry.
KNOWN_PRODUCT_BUGS: dict[tuple[str, str], str] = {}
#: Pages that others are writing now, whose examples do not follow the convention yet -> why. Strict
#: xfail: the page's test fails once its examples pass, as a reminder to delete the entry.
PENDING_PAGES: dict[str, str] = {}
#: Pages run at once: their examples mostly wait (on sleeps, timeouts, clusters starting), so running
#: a few pages side by side keeps the whole module near its longest page on this 2-core machine.
CONCURRENT_PAGES = 6


def known_bug(block: Block) -> Optional[str]:
    for (page, line), bug in KNOWN_PRODUCT_BUGS.items():
        if block.page.name == page and line in block.lines:
            return bug
    return None


def run_page(page: pathlib.Path, directory: pathlib.Path) -> list[str]:
    """Run every example of `page` in `directory`; the known bugs that showed (raises on any other failure)."""
    blocks = parse(page)
    run = PageRun(directory, page.read_text())
    shown: list[str] = []
    try:
        for index, block in enumerate(blocks):
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            try:
                if block.not_run is not None:
                    check_parses(block)
                elif block.lang in ("python", "py"):
                    output = following if (following is not None and following.follows_block
                                           and following.lang in OUTPUT_LANGS and not following.is_console) else None
                    run.run_python(block, output)
                elif block.is_console:
                    run.run_console(block)
                elif block.lang in SHELL_LANGS:
                    run.run_commands(block)
            except BaseException:
                bug = known_bug(block)
                if bug is None:
                    raise
                shown.append(f"{block.where}: {bug}")
            else:
                if known_bug(block) is not None:
                    pytest.fail(f"{block.where} passes now: delete its KNOWN_PRODUCT_BUGS entry", pytrace=False)
    finally:
        run.cluster.close()
    return shown


@pytest.fixture(scope="module")
def page_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[pathlib.Path, Any]:
    """Every page run, a few at a time: page -> the known bugs shown, or the exception that failed it."""
    directories = {page: tmp_path_factory.mktemp(page.stem) for page in PAGES}  # mktemp is not thread-safe

    def outcome(page: pathlib.Path) -> Any:
        try:
            return run_page(page, directories[page])
        except BaseException as error:  # pytest.fail raises an exception that is no Exception
            return error

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT_PAGES) as pool:
        return dict(zip(PAGES, pool.map(outcome, PAGES)))


@pytest.mark.timeout(300)  # the first test runs every page (about a minute); the others only report
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples(page: pathlib.Path, page_outcomes: dict[pathlib.Path, Any]) -> None:
    outcome = page_outcomes[page]
    pending = PENDING_PAGES.get(str(page.relative_to(DOCS)))
    if pending is not None:
        if isinstance(outcome, BaseException):
            pytest.xfail(f"pending: {pending}")
        pytest.fail(f"docs/{page.name} passes now: delete its PENDING_PAGES entry", pytrace=False)
    if isinstance(outcome, BaseException):
        raise outcome
    if outcome:
        pytest.xfail("known product bugs: " + "; ".join(outcome))


def test_the_placeholders_are_narrow() -> None:
    """`...` spans a line's text, a `...` line spans whole lines, and nothing else is loose."""
    assert expected_pattern(["worker ... on node local"]).fullmatch("worker 4121 on node local\n")
    assert not expected_pattern(["worker ... on node local"]).fullmatch("worker 4121\n on node local\n")
    assert expected_pattern(["a", "...", "b"]).fullmatch("a\nb\n")
    assert expected_pattern(["a", "...", "b"]).fullmatch("a\nx\ny\nb\n")
    assert not expected_pattern(["a", "b"]).fullmatch("a\nb\nc\n")
    assert not expected_pattern(["[1, 2]"]).fullmatch("[1, 3]\n")


def test_a_block_that_is_not_run_still_goes_through_the_cli_parser() -> None:
    """The not-run check fails on a lucidity command line that the CLI refuses, even inside another command."""
    good = Block(DOCS / "x.md", 1, "sh", ['ssh host "lucidity node 10.0.0.2 --processes 2" &',
                                         "LUCIDITY_SECRET_FILE=s timeout 3 lucidity status 10.0.0.2 | grep node"])
    check_parses(good)
    for line in ["lucidity node 10.0.0.2 --worker-port 3032", 'ssh host "lucidity control --no-such-option"']:
        with pytest.raises(pytest.fail.Exception, match="refused by the lucidity CLI"):
            check_parses(Block(DOCS / "x.md", 1, "sh", [line]))
    with pytest.raises(SyntaxError):
        check_parses(Block(DOCS / "x.md", 1, "python", ["Pool(*, address=None)"]))
