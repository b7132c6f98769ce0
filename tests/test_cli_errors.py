"""Commands that fail before any container is touched: one line, exit code 1, no traceback, in a
real process. They need no Docker engine (one of them checks what happens without one)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import cli_process
from tests.engine_support import configuration, deployment, docs, make_root
from tests.test_watch import commit, git_init


def test_engine_unreachable_is_one_line_and_unknown(tmp_path: Path):
    root, _ = make_root(tmp_path)
    (root / "manifests/app.yaml").write_text(
        docs(configuration("tiny-v1"), deployment("tiny", "tiny-v1"))
    )
    env = {**os.environ, "DOCKER_HOST": "unix:///tmp/no-docker-here.sock"}
    result = cli_process("reconcile", "--root", root, env=env)
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.strip().startswith(
        "error: Docker engine unreachable at unix:///tmp/no-docker-here.sock"
    )
    status = cli_process("status", "--json", "--root", root, env=env)
    assert status.code == 0 and "Traceback" not in status.err
    item = json.loads(status.out)["deployments"][0]
    assert item["status"] == "UNKNOWN" and "Docker engine unreachable" in item["statusMessage"]


def test_watch_errors_are_one_line(tmp_path: Path):
    root, _ = make_root(tmp_path)
    result = cli_process("watch", "--root", root, "--git")
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.strip().startswith("error: ") and "is not in a git work tree" in result.err
    result = cli_process("watch", "--root", root, "--branch", "main")
    assert result.code == 1 and result.err.strip() == (
        "error: --branch and --remote follow committed manifests: add --git"
    )
    git_init(root)
    commit(root, "first")
    result = cli_process("watch", "--root", root, "--git", "--remote", "upstream")
    assert result.code == 1 and result.err.strip() == (
        f"error: {root} has no git remote 'upstream' (git remote -v lists them)"
    )
    result = cli_process("watch", "--root", root, "--git", "--branch", "nope")
    assert result.code == 1 and "branch 'nope' does not exist" in result.err
