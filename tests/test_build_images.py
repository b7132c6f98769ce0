"""scripts/build-images verifies every image before it is used, against the real engine.

A small fixture runtime (tests/fixtures/selfcheck-runtime: a bare venv with one module for a
model stack, and a standard-library server) goes through the same build, label and check code as the model
runtimes: a cached image that lost a venv file is caught and rebuilt without the layer cache;
a build that keeps failing its self-check exits 1 with one line and leaves the good image
tagged.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import FIXTURES, PROJECT

# Up to three image builds a test (its module's first one included), at most 600 s each.
pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]

IMAGE = "reconciler-test/selfcheck-runtime:1"
VENV_CACHE = "reconciler/selfcheck-runtime-venv:cache"
LOST_FILE = "/opt/venv/lib/python3.11/site-packages/fixture_stack.py"


def build(runtime: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROJECT / "scripts/build-images"), "--runtime", str(runtime), "--image", IMAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )


def image_id(client: docker.APIClient, name: str) -> str | None:
    try:
        return client.inspect_image(name)["Id"]
    except docker.errors.ImageNotFound:
        return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fixture runtime, built once for this module; yields the good image's ID."""
    client = docker.APIClient()
    folder = tmp_path_factory.mktemp("first") / "selfcheck-runtime"
    shutil.copytree(FIXTURES / "selfcheck-runtime", folder)
    first = build(folder)
    assert first.returncode == 0, first.stderr
    assert f"image: built {IMAGE}" in first.stdout
    assert "verified:" in first.stdout and "/predict answered 200" in first.stdout
    assert image_id(client, IMAGE + "-candidate") is None
    yield str(image_id(client, IMAGE))
    for name in (IMAGE, IMAGE + "-candidate", VENV_CACHE):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.remove_image(name, force=True)


@pytest.fixture
def runtime(tmp_path: Path, built: str) -> Path:
    """A copy of the fixture runtime (same content, so the same content hash as `built`)."""
    folder = tmp_path / "selfcheck-runtime"
    shutil.copytree(FIXTURES / "selfcheck-runtime", folder)
    return folder


def corrupt(client: docker.APIClient, image: str, path: str) -> str:
    """Removes one file from the image's venv and commits it under the same tag (the labels,
    content hash included, come along): what a lossy storage driver did to a real image."""
    container = client.create_container(image, ["rm", path], user="0", entrypoint=[])
    try:
        client.start(container)
        assert client.wait(container)["StatusCode"] == 0
        repository, tag = image.rsplit(":", 1)
        return client.commit(container, repository=repository, tag=tag)["Id"]
    finally:
        client.remove_container(container, force=True)


def test_a_cached_image_missing_a_venv_file_is_caught_and_rebuilt(runtime: Path) -> None:
    client = docker.APIClient()
    good = image_id(client, IMAGE)
    again = build(runtime)
    assert again.returncode == 0, again.stderr
    assert f"image: {IMAGE} cached" in again.stdout and "verified" in again.stdout
    assert image_id(client, IMAGE) == good

    broken = corrupt(client, IMAGE, LOST_FILE)
    assert image_id(client, IMAGE) == broken != good
    repaired = build(runtime)
    assert repaired.returncode == 0, repaired.stderr
    caught = [line for line in repaired.stdout.splitlines() if "failed its check" in line]
    assert len(caught) == 1, repaired.stdout
    assert LOST_FILE in caught[0] and "rebuilding without the layer cache" in caught[0]
    assert f"image: built {IMAGE}" in repaired.stdout
    assert image_id(client, IMAGE) not in (None, broken)

    # The rebuilt image holds the file again.
    run = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "test", IMAGE, "-f", LOST_FILE],
        capture_output=True,
    )
    assert run.returncode == 0


def test_a_build_that_fails_its_self_check_twice_keeps_the_good_image(runtime: Path) -> None:
    client = docker.APIClient()
    good = image_id(client, IMAGE)
    assert good is not None

    server = runtime / "server.py"
    server.write_text("import no_such_model_stack\n" + server.read_text())
    failed = build(runtime)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("build-images: image: ") and IMAGE in last
    assert "No module named 'no_such_model_stack'" in last
    assert "without the layer cache" in last
    assert "rebuilding without the layer cache" in failed.stdout  # the one retry, said once
    assert image_id(client, IMAGE) == good
    assert image_id(client, IMAGE + "-candidate") is None
