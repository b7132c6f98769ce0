"""The compiled schema validators kept in the user's cache folder: made once, then read back,
and never trusted from a file someone else could have written."""

from __future__ import annotations

import marshal
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.manifests import schema

GOOD = {
    "apiVersion": "reconciler/v1",
    "kind": "Deployment",
    "metadata": {"name": "churn"},
    "spec": {"configurationId": "churn-v1"},
}
BAD = {**GOOD, "spec": {"configurationId": "churn-v1", "targetStatus": "FLYING"}}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    schema._fast_check.cache_clear()
    yield tmp_path / "reconciler" / "schemas"
    schema._fast_check.cache_clear()


def fresh_check(body: dict) -> list[tuple[str, str]]:
    schema._fast_check.cache_clear()  # as a new process: nothing compiled in memory
    return schema.check(body)


def test_validators_are_made_once_and_read_back_with_the_same_verdicts(cache: Path):
    assert fresh_check(GOOD) == []
    (entry,) = cache.iterdir()
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert oct(entry.stat().st_mode & 0o777) == "0o600"
    made = entry.stat().st_mtime_ns
    assert fresh_check(GOOD) == []
    assert [p for p, _ in fresh_check(BAD)] == ["/spec/targetStatus"]
    assert entry.stat().st_mtime_ns == made  # read, not made again


def test_a_damaged_entry_is_made_again(cache: Path):
    fresh_check(GOOD)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"\x00not marshal data")
    assert [p for p, _ in fresh_check(BAD)] == ["/spec/targetStatus"]
    assert fresh_check(GOOD) == []


def test_an_entry_others_could_write_is_not_run(cache: Path):
    fresh_check(GOOD)
    (entry,) = cache.iterdir()
    # Code that would accept anything, planted where anyone could have written it.
    planted = compile(f"def {_entry_name()}(data, **kw):\n    return data\n", "x", "exec")
    entry.write_bytes(marshal.dumps(planted))
    os.chmod(entry, 0o666)
    assert [p for p, _ in fresh_check(BAD)] == ["/spec/targetStatus"]
    os.chmod(entry, 0o600)
    os.chmod(cache, 0o777)
    assert [p for p, _ in fresh_check(BAD)] == ["/spec/targetStatus"]


def test_an_unwritable_cache_folder_only_costs_time(cache: Path):
    cache.parent.mkdir(parents=True)
    cache.write_text("a file where the folder would be")
    assert fresh_check(GOOD) == []
    assert [p for p, _ in fresh_check(BAD)] == ["/spec/targetStatus"]


def _entry_name() -> str:
    from fastjsonschema.ref_resolver import RefResolver

    body = schema._dereference(schema.bundle("deployment"))
    return RefResolver.from_schema(body, store={}).get_scope_name()
