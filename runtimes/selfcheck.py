"""The self-check of a runtime image: run inside it by scripts/build-images after every build and
whenever a cached image is about to be used, before anything deploys it.

    docker run --rm --network none --entrypoint python IMAGE /app/selfcheck.py

It reads /app/selfcheck.json (the runtime's own part, beside its Dockerfile) and proves, in this
order: the listed modules import (the server's model stack); `prepare` succeeds (e.g. training a
tiny model); the server starts on a free port with `env`, answers `ready` with 200 within
`deadline_s`, and answers `request` with 200 and JSON. Prints one line and exits 0, or prints the
server's last output and ends with one line `selfcheck: failed: REASON` (exit 1), REASON being
the error itself (an ImportError's message, the server's last line) so the build can name it.

Standard library only: it must work in any image, whatever the image's packages are. `{port}`
and `{scratch}` in selfcheck.json are replaced with the port and a scratch folder.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SPEC = Path(__file__).with_name("selfcheck.json")


class Failed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [fill(item, names) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, names) for key, item in value.items()}
    return value


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def check_imports(modules: list[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure to import is the finding, whatever its type
            raise Failed(f"import {module}: {type(exc).__name__}: {exc}") from exc


def http(port: int, path: str, body: Any = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers={"Content-Type": "application/json"} if data else {},
        method="POST" if data else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run(spec: dict[str, Any], scratch: str) -> str:
    started = time.monotonic()
    check_imports(spec.get("imports", []))
    port = free_port()
    names = {"port": str(port), "scratch": scratch}
    if spec.get("prepare"):
        prepared = subprocess.run(
            fill(spec["prepare"], names), capture_output=True, text=True, timeout=300
        )
        if prepared.returncode:
            sys.stderr.write(prepared.stdout + prepared.stderr)
            raise Failed(f"prepare {' '.join(spec['prepare'])}: {last_line(prepared.stderr)}")
    env = {**os.environ, **fill(spec.get("env", {}), names)}
    log = Path(scratch) / "server.log"
    with log.open("w+") as output:
        server = subprocess.Popen(
            fill(spec["server"], names), env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            ready_in = wait_ready(server, port, spec["ready"], spec.get("deadline_s", 60), log)
            request = spec.get("request")
            if request:
                status, body = http(port, request["path"], request.get("body", {}))
                if status != 200:
                    raise Failed(f"POST {request['path']} answered {status}: {body[:200]!r}")
                json.loads(body)
        except Failed:
            sys.stderr.write(log.read_text()[-4000:])
            raise
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    what = f"{len(spec.get('imports', []))} imports, ready in {ready_in:.1f}s"
    if spec.get("request"):
        what += f", {spec['request']['path']} answered 200"
    return f"selfcheck: ok ({what}; {time.monotonic() - started:.1f}s in all)"


def wait_ready(
    server: subprocess.Popen[bytes], port: int, path: str, deadline_s: float, log: Path
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if server.poll() is not None:
            raise Failed(
                f"the server exited with {server.returncode}: {last_line(log.read_text())}"
            )
        try:
            status, _ = http(port, path, timeout=2)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise Failed(
        f"GET {path} did not answer 200 within {deadline_s}s: {last_line(log.read_text())}"
    )


def main() -> int:
    try:
        spec = json.loads(SPEC.read_text())
        with tempfile.TemporaryDirectory(prefix="selfcheck-") as scratch:
            print(run(spec, scratch))
        return 0
    except Failed as exc:
        print(f"selfcheck: failed: {exc}")
        return 1
    except Exception as exc:
        print(f"selfcheck: failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
