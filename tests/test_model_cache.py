"""The model cache (issue 18) against a real S3-compatible server (s3s-fs on loopback): one
download per version, shared and instant afterwards; a new upload is a new entry; a download
that fails or is killed leaves nothing behind; least recently used entries go first, never one
in use."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.stores.cache import COMPLETE, PARTIAL, ModelCache
from reconciler.stores.s3 import StoreError, listing, locate
from reconciler.stores.secrets import ObjectStoreSecret, ObjectStoreSecrets
from tests.s3_support import ACCESS_KEY, SECRET_KEY, S3Server

BIG = os.urandom(9 * 1024 * 1024)  # large enough that a download takes a while


@pytest.fixture
def store(s3_server: S3Server, tmp_path: Path):
    bucket = s3_server.bucket()
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="churn/1/model.joblib", Body=BIG)
    s3.put_object(Bucket=bucket, Key="churn/1/sub/meta.json", Body=b'{"v": 1}')
    secrets = ObjectStoreSecrets(tmp_path / "objectstores.json")
    secrets.put(
        ObjectStoreSecret(
            "models", "default", bucket, ACCESS_KEY, SECRET_KEY, endpoint=s3_server.endpoint
        )
    )
    return s3_server, bucket, secrets


def test_a_version_is_downloaded_once_checked_and_shared(store, tmp_path: Path):
    server, bucket, secrets = store
    cache = ModelCache(tmp_path / "cache")
    found = listing(locate("ai://models/churn/1", "default", secrets))
    seen: list[tuple[int, int]] = []
    entry = cache.fetch(found, progress=lambda done, total: seen.append((done, total)))
    assert (entry / "model.joblib").read_bytes() == BIG
    assert (entry / "sub/meta.json").read_bytes() == b'{"v": 1}'
    assert entry.name == found.version and (entry / COMPLETE).is_file()
    assert seen and seen[-1] == (found.size, found.size)  # progress up to the whole

    started = time.monotonic()
    again = cache.fetch(listing(locate("ai://models/churn/1", "default", secrets)))
    assert again == entry and time.monotonic() - started < 1.0  # (no download: a listing)
    assert [v for v, _, _ in cache.entries()] == [found.version]

    server.client().put_object(Bucket=bucket, Key="churn/1/sub/meta.json", Body=b'{"v": 2}')
    newer = cache.fetch(listing(locate("ai://models/churn/1", "default", secrets)))
    assert newer != entry and (newer / "sub/meta.json").read_bytes() == b'{"v": 2}'
    assert (entry / "sub/meta.json").read_bytes() == b'{"v": 1}'  # the old one is untouched


def test_a_failed_download_leaves_nothing_and_the_next_one_completes(store, tmp_path: Path):
    server, bucket, secrets = store
    cache = ModelCache(tmp_path / "cache")
    found = listing(locate("ai://models/churn/1", "default", secrets))
    server.client().delete_object(Bucket=bucket, Key="churn/1/sub/meta.json")  # gone meanwhile
    with pytest.raises(StoreError, match=r"downloading churn/1/sub/meta\.json failed"):
        cache.fetch(found)
    assert not cache.has(found.version)
    assert not [p for p in cache.root.iterdir() if p.name.startswith(PARTIAL)]


def test_a_download_killed_halfway_leaves_no_entry(store, tmp_path: Path):
    """A process killed while it downloads (SIGKILL: no cleanup runs) leaves a hidden partial
    folder, never an entry; the next fetch removes it and completes."""
    _, _, secrets = store
    cache_root = tmp_path / "cache"
    script = f"""
import sys
from pathlib import Path
from reconciler.stores.cache import ModelCache
from reconciler.stores.s3 import listing, locate
from reconciler.stores.secrets import ObjectStoreSecrets
found = listing(locate("ai://models/churn/1", "default", ObjectStoreSecrets(Path({str(secrets.path)!r}))))
def slow(done, total):
    print(done, flush=True)
    import time; time.sleep(0.2)
ModelCache(Path({str(cache_root)!r})).fetch(found, progress=slow)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()  # it has begun downloading
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    cache = ModelCache(cache_root)
    found = listing(locate("ai://models/churn/1", "default", secrets))
    assert not cache.has(found.version)
    assert [p for p in cache_root.iterdir() if p.name.startswith(PARTIAL)]  # left by the kill
    entry = cache.fetch(found)
    assert hashlib.sha256((entry / "model.joblib").read_bytes()).digest() == (
        hashlib.sha256(BIG).digest()
    )
    assert not [p for p in cache_root.iterdir() if p.name.startswith(PARTIAL)]


def test_eviction_takes_the_least_recently_used_not_one_in_use(store, tmp_path: Path):
    server, bucket, secrets = store
    cache = ModelCache(tmp_path / "cache")
    s3 = server.client()
    versions = []
    for n in range(3):
        s3.put_object(Bucket=bucket, Key=f"small/{n}/w.bin", Body=bytes([n]) * 1000)
        found = listing(locate(f"ai://models/small/{n}", "default", secrets))
        cache.fetch(found)
        versions.append(found.version)
        time.sleep(0.05)
    cache.fetch(listing(locate("ai://models/small/0", "default", secrets)))  # 0 used again
    removed = cache.evict(limit=2500, keep={versions[1]})  # room for two
    assert removed == [versions[2]]  # 1 is in use; 2 is the least recently used of the rest
    assert sorted(v for v, _, _ in cache.entries()) == sorted(versions[:2])


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB file system (tmpfs) for the cache: a full disk for real. Needs root, or the
    right to mount; skipped with the reason otherwise."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(store, small_disk: Path):
    _, _, secrets = store
    cache = ModelCache(small_disk / "cache")
    found = listing(locate("ai://models/churn/1", "default", secrets))  # 9 MiB > 4 MiB
    with pytest.raises(StoreError) as caught:
        cache.fetch(found)
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message, message
    assert not cache.has(found.version)
    left = [p for p in (small_disk / "cache").rglob("*") if p.is_file()]
    assert all(p.parent.name == ".locks" for p in left), left  # only the version's lock file
