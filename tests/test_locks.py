"""The lock files: current with their inputs, exact, hashed, and what the venv really holds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

from .conftest import PROJECT

LOCK_INPUTS = [
    "scripts/lock",
    "pyproject.toml",
    "requirements/*",
    "runtimes/*/requirements*",
    "runtimes/*/overrides.txt",
    "tests/fixtures/*/requirements*",
]


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts/lock"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def copy_of_project(tmp_path: Path) -> Path:
    for pattern in LOCK_INPUTS:
        for source in PROJECT.glob(pattern):
            target = tmp_path / source.relative_to(PROJECT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return tmp_path


def test_every_lock_file_is_current_with_its_inputs() -> None:
    result = check(PROJECT)
    assert result.returncode == 0, result.stderr
    assert "lock files up to date" in result.stdout


def test_a_changed_input_makes_its_lock_out_of_date(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    assert check(root).returncode == 0
    inputs = root / "runtimes/sklearn/requirements.in"
    inputs.write_text(inputs.read_text() + "\nrequests>=2\n")
    result = check(root)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "lock: runtimes/sklearn/requirements.lock is out of date with "
        "runtimes/sklearn/requirements.in, runtimes/sklearn/overrides.txt; "
        "run `make lock` and commit the result"
    )


def test_a_hand_edited_pin_that_breaks_an_input_range_is_caught(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    lock = root / "runtimes/sklearn/requirements.lock"
    lock.write_text(re.sub(r"(?m)^kserve==[^ ]+", "kserve==0.15.2", lock.read_text()))
    result = check(root)
    assert result.returncode == 1
    assert "kserve ['0.15.2'] does not satisfy 'kserve>=0.16.0,<0.17'" in result.stderr


def test_a_lock_line_without_hashes_is_caught(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    lock = root / "requirements/dev.lock"
    text = lock.read_text()
    lock.write_text(
        re.sub(r"(?m)^(click==[^ ]+) \\\n(    --hash=\S+ \\\n)*    --hash=\S+\n", r"\1\n", text)
    )
    result = check(root)
    assert result.returncode == 1
    assert re.search(r"dev.lock: click==\S+ has no --hash", result.stderr)


def test_the_virtual_env_holds_exactly_the_locked_versions() -> None:
    """make installs requirements/dev.lock with --require-hashes: every locked package that
    applies to this Python is installed at its pinned version."""
    text = (PROJECT / "requirements/dev.lock").read_text()
    checked = 0
    for match in re.finditer(
        r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)(?: ; ([^\\]+))?", text
    ):
        name, version, marker = match[1], match[2], match[3]
        if marker and not Marker(marker.strip()).evaluate():
            continue
        assert metadata.version(canonicalize_name(name)) == version, name
        checked += 1
    assert checked > 40
