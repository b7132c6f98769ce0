"""The model cache (issue 18) against a real S3-compatible server (s3s-fs on loopback): one
download per version, shared and instant afterwards; a new upload is a new entry; a download
that is killed or cut off leaves no entry and the next one resumes it; an object changed
meanwhile, a full disk and a slow store are one line each; least recently used entries go
first, never one in use."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.stores import cache as cache_module
from reconciler.stores import s3
from reconciler.stores.cache import COMPLETE, PARTIAL, ModelCache
from reconciler.stores.s3 import StoreError, listing, locate
from reconciler.stores.secrets import ObjectStoreSecret, ObjectStoreSecrets
from tests.s3_support import ACCESS_KEY, SECRET_KEY, FaultyLink, S3Server

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


def test_an_object_changed_during_the_download_leaves_nothing(store, tmp_path: Path):
    server, bucket, secrets = store
    cache = ModelCache(tmp_path / "cache")
    found = listing(locate("ai://models/churn/1", "default", secrets))
    server.client().delete_object(Bucket=bucket, Key="churn/1/sub/meta.json")  # gone meanwhile
    with pytest.raises(StoreError, match=r"churn/1/sub/meta\.json changed or went while"):
        cache.fetch(found)
    assert not cache.has(found.version)
    assert not [p for p in cache.root.iterdir() if p.name.startswith(PARTIAL)]
    newer = listing(locate("ai://models/churn/1", "default", secrets))
    assert (cache.fetch(newer) / "model.joblib").read_bytes() == BIG  # the next pass's listing


def _resumed_from(cache: ModelCache, found) -> int:
    """Fetch, and say how many bytes were there already (the first progress report)."""
    seen: list[int] = []
    entry = cache.fetch(found, progress=lambda done, total: seen.append(done))
    assert hashlib.sha256((entry / "model.joblib").read_bytes()).digest() == (
        hashlib.sha256(BIG).digest()
    )
    assert (entry / "sub/meta.json").read_bytes() == b'{"v": 1}'
    assert not [p for p in entry.rglob("*.parts")]  # no journal in an entry
    assert not [p for p in cache.root.iterdir() if p.name.startswith(PARTIAL)]
    return seen[0]


def test_a_download_killed_halfway_leaves_no_entry_and_the_next_resumes(store, tmp_path: Path):
    """A process killed while it downloads (SIGKILL: no cleanup runs) leaves a hidden partial
    folder, never an entry; the next fetch reads only the parts that were missing."""
    _, _, secrets = store
    cache_root = tmp_path / "cache"
    script = f"""
import sys, time
from pathlib import Path
from reconciler.stores.cache import ModelCache
from reconciler.stores.s3 import listing, locate
from reconciler.stores.secrets import ObjectStoreSecrets
found = listing(locate("ai://models/churn/1", "default", ObjectStoreSecrets(Path({str(secrets.path)!r}))))
print(found.version, flush=True)
ModelCache(Path({str(cache_root)!r})).fetch(found, progress=lambda done, total: time.sleep(0.2))
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    version = child.stdout.readline().strip()
    journals = cache_root / f"{PARTIAL}{version}"
    deadline = time.monotonic() + 30
    while not any(j.read_text() for j in journals.rglob("*.parts")):  # a part is done
        assert time.monotonic() < deadline and child.poll() is None, "no part was written"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    cache = ModelCache(cache_root)
    found = listing(locate("ai://models/churn/1", "default", secrets))
    assert found.version == version and not cache.has(version)
    assert journals.is_dir()  # kept for the next fetch, hidden: not an entry
    assert [v for v, _, _ in cache.entries()] == []
    already = _resumed_from(cache, found)
    assert 0 < already < found.size, already


def test_a_store_that_goes_down_midway_keeps_what_came_and_the_next_fetch_resumes(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    server, bucket, _ = store
    # Parts of 1 MiB, 2 at a time: the 9 MiB object is 9 parts, some done when the store goes.
    monkeypatch.setattr(cache_module, "PART", 1024 * 1024)
    monkeypatch.setattr(cache_module, "PARALLEL", 2)
    link = FaultyLink(server.port)
    try:
        via = ObjectStoreSecrets(tmp_path / "via.json")
        via.put(
            ObjectStoreSecret(
                "models", "default", bucket, ACCESS_KEY, SECRET_KEY, endpoint=link.endpoint
            )
        )
        found = listing(locate("ai://models/churn/1", "default", via))
        cache = ModelCache(tmp_path / "cache")
        link.down_after = 3 * 1024 * 1024  # the store goes away after 3 MiB of the 9
        with pytest.raises(StoreError) as caught:
            cache.fetch(found)
        message = str(caught.value)
        assert "\n" not in message and SECRET_KEY not in message, message
        assert not cache.has(found.version)
        link.heal()  # the store is back
        already = _resumed_from(cache, found)
        # At least one whole part came before the cut (3 MiB over 2 streams of 1 MiB parts);
        # how many more depends on how the two streams were scheduled.
        assert already >= 1024 * 1024, f"only {already} bytes of the first download were kept"
        # Only what was missing is read again (and the requests' heads).
        assert link.relayed < len(BIG) - already + 64 * 1024, f"read again: {link.relayed} bytes"
    finally:
        link.close()


def test_bytes_damaged_on_the_way_fail_the_etag_check_and_are_read_again(store, tmp_path: Path):
    server, bucket, _ = store
    link = FaultyLink(server.port)
    try:
        via = ObjectStoreSecrets(tmp_path / "via.json")
        via.put(
            ObjectStoreSecret(
                "models", "default", bucket, ACCESS_KEY, SECRET_KEY, endpoint=link.endpoint
            )
        )
        found = listing(locate("ai://models/churn/1", "default", via))
        cache = ModelCache(tmp_path / "cache")
        link.heal()
        link.flip_at = 2 * 1024 * 1024  # one bit, well inside model.joblib's bytes
        with pytest.raises(StoreError, match="does not match its ETag") as caught:
            cache.fetch(found)
        assert "\n" not in str(caught.value)
        assert not cache.has(found.version)
        link.heal()
        entry = cache.fetch(found)  # the damaged file was dropped, so it is read again
        assert (entry / "model.joblib").read_bytes() == BIG
    finally:
        link.close()


def test_a_store_that_does_not_answer_is_one_line_in_bounded_time(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A store that takes the connection and never answers (hung, or very slow) fails the
    listing after the client's read timeout, with one line, not a hang."""
    server, bucket, _ = store
    monkeypatch.setattr(s3, "READ_SECONDS", 1.0)
    monkeypatch.setattr(s3, "ATTEMPTS", 1)
    link = FaultyLink(server.port)
    link.stall = True
    try:
        hung = ObjectStoreSecrets(tmp_path / "hung.json")
        hung.put(
            ObjectStoreSecret(
                "models", "default", bucket, ACCESS_KEY, SECRET_KEY, endpoint=link.endpoint
            )
        )
        started = time.monotonic()
        with pytest.raises(StoreError, match="the store does not answer") as caught:
            listing(locate("ai://models/churn/1", "default", hung))
        assert time.monotonic() - started < 10
        assert "\n" not in str(caught.value)
    finally:
        link.close()


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


def test_an_entry_another_instance_keeps_is_never_evicted(store, tmp_path: Path):
    """Two reconciler instances on one host share the cache, each knowing only its own
    deployments: what one still keeps, the other's eviction leaves alone."""
    server, bucket, secrets = store
    cache = ModelCache(tmp_path / "cache")
    versions = []
    for n in range(3):
        server.client().put_object(Bucket=bucket, Key=f"v/{n}/w.bin", Body=bytes([n]) * 1000)
        versions.append(cache.fetch(listing(locate(f"ai://models/v/{n}", "default", secrets))))
    a, b, c = (v.name for v in versions)
    assert cache.evict(limit=10**9, keep={b}, user="staging") == []  # within the limit
    assert cache.evict(limit=0, keep={a}, user="prod") == [c]  # b is staging's
    assert sorted(v for v, _, _ in cache.entries()) == sorted([a, b])
    assert cache.evict(limit=0, keep=set(), user="staging") == [b]  # staging let it go
    assert [v for v, _, _ in cache.entries()] == [a]  # prod's, though prod passed no keep


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
