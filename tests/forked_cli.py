"""The real CLI in a child process of its own for each run, forked from a process that has
already imported it.

What a child process shows (its exit code, its stderr, its peak memory; a hang is killed after
a deadline, not waited for) without paying for an interpreter's start and the package's imports
on every run: a fork costs milliseconds, a fresh `python -m reconciler` about 0.1 s. The child
runs `reconciler.cli.main.main` as `python -m reconciler` does (`sys.exit(main())`: an uncaught
exception prints its traceback and exits 1). `conftest.cli_process` runs the console script
itself, for what only a whole new process shows (signals, the interpreter's own exit).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT, Result

# The forking process: reads one job a line on stdin; answers {"pid": N} once the child runs
# and {"code": N} once it has ended, on the descriptor it was given (its own stdout and stderr
# stay free for the children).
_SERVER = r"""
import json, os, resource, sys, traceback

# Under this, a template bomb that escaped the bounds fails with MemoryError (a traceback)
# instead of taking the machine's memory; the peak asserted is far lower anyway.
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from reconciler.cli.main import main

# What `validate` and `plan` import on first use, imported once here (a speed-up only: a module
# that is not there is skipped).
import importlib, pkgutil, reconciler
for package in ("manifests", "core", "cli"):
    try:
        path = importlib.import_module(f"reconciler.{package}").__path__
    except ImportError:
        continue
    for info in pkgutil.iter_modules(path, f"reconciler.{package}."):
        try:
            importlib.import_module(info.name)
        except Exception:
            pass

answers = int(sys.argv[1])


def peak_kib():
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec. A forked
    # child's VmHWM starts at what it inherited: this process, which has loaded the package.
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmHWM:")).split()[1])


def run(job):
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.close(answers)
    os.chdir(job["cwd"])
    try:
        code = main(job["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    with open(job["peak"], "w") as out:
        out.write(str(peak_kib()))
    os._exit(code)


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        run(job)
    os.write(answers, (json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    os.write(answers, (json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n").encode())
"""


@dataclass
class Run:
    result: Result
    peak_mib: int


class _Server:
    def __init__(self) -> None:
        read, write = os.pipe()
        self.answers = read
        self.pending = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(write)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=(write,),
            cwd=PROJECT,
        )
        os.close(write)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def answer(self, timeout: float) -> dict[str, int] | None:
        """The next answer line; None when none came within `timeout`."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.answers], [], [], left)[0]:
                return None
            data = os.read(self.answers, 4096)
            if not data:
                raise AssertionError(f"the forking process ended ({self.proc.wait()})")
            self.pending += data
        line, _, self.pending = self.pending.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        if self.answers >= 0:
            os.close(self.answers)
            self.answers = -1


_server: _Server | None = None


def _get() -> _Server:
    global _server
    if _server is None or not _server.alive():
        _server = _Server()
        atexit.register(_server.close)
    return _server


def run_cli(*args: str | Path, timeout: float, cwd: Path = PROJECT) -> Run:
    """`reconciler ARGS...` in a forked child; killed after `timeout` seconds (a hang guard:
    subprocess.TimeoutExpired, as subprocess.run raises)."""
    global _server
    server = _get()
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as tmp:
        files = {name: Path(tmp) / name for name in ("out", "err", "peak")}
        job = {
            "args": [str(a) for a in args],
            "cwd": str(cwd),
            **{k: str(v) for k, v in files.items()},
        }
        try:
            assert server.proc.stdin is not None
            server.proc.stdin.write((json.dumps(job) + "\n").encode())
            server.proc.stdin.flush()
            started = server.answer(timeout=60)
            assert started is not None, "the forking process did not fork"
            ended = server.answer(timeout)
            if ended is None:
                os.kill(started["pid"], signal.SIGKILL)
                server.answer(timeout=60)
                raise subprocess.TimeoutExpired([str(a) for a in args], timeout)
        except BaseException:
            # (a job half done, or this test stopped by its timeout: start afresh next time)
            server.close()
            _server = None
            raise
        out, err, peak = (p.read_text() if p.exists() else "" for p in files.values())
        return Run(Result(ended["code"], out, err), int(peak or 0) // 1024)
