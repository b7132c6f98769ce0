"""The storage initializer: what runs on a host that has no reconciler, to put a model into
that host's model cache (reconciler.stores.cache). The image `reconciler/initializer:1`
(runtimes/initializer, built by scripts/build-images with this module and the modules it
imports) runs it as `python -m reconciler.stores.initializer`; on Swarm, one job per download
runs it on every node (reconciler.backends.swarm.models).

    fetch --cache DIR --listing FILE --private FILE
        ModelCache(DIR).fetch(listing): downloads the model's objects once per version,
        resumable, checked, renamed into place only when whole, under the version's lock (a
        node that has the version is done at once)
    evict --cache DIR --remove V... [--keep V...]
        removes those versions, and unfinished downloads of versions in neither list that no
        fetch is busy with (ModelCache.evict)
    mkdir DIR
        makes the cache folder (a Swarm job binds the folder's top-level folder for that)

A listing travels in two parts (`split`, `join`): what may be shown (the objects with their
sizes and ETags, the bucket, endpoint, region and prefix, the version they make) and what may
not (an object-store secret's credentials; an https:// URL, whose query may be a signature),
which a Swarm job gets as a secret, never in its spec, arguments or environment.

Each command prints one line as it starts and one as it ends; a failure ends with the store's
one-line reason (StoreError, never a credential) and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cache import ModelCache
from .listing import Listing, StoredObject, StoreError, one_line

FORMAT_VERSION = 1
FAILED = 1
UNEXPECTED = 2


def split(listing: Listing) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what may be shown, what may not) of a listing: `join` makes it again. Raises
    StoreError for a store the initializer cannot read."""
    from .s3 import Location

    location = listing.location
    public: dict[str, Any] = {
        "formatVersion": FORMAT_VERSION,
        "version": listing.version,
        "objects": [[o.key, o.size, o.etag] for o in listing.objects],
    }
    if isinstance(location, Location):
        public["store"] = {
            "kind": "s3",
            "secret": location.secret.public(),
            "prefix": location.prefix,
            "ranges": location.ranges,
        }
        private = location.secret.to_json()["data"]
        return public, {"kind": "s3", "data": private}
    from .https import HttpLocation

    if isinstance(location, HttpLocation):
        fields = {f.name: getattr(location, f.name) for f in dataclasses.fields(location)}
        url = fields.pop("url")
        public["store"] = {"kind": "https", **fields}
        return public, {"kind": "https", "url": url}
    raise StoreError(
        f"{location.describe()}: the storage initializer cannot download from this kind of store"
    )


def join(public: Mapping[str, Any], private: Mapping[str, Any]) -> Listing:
    """The listing `split` gave these two parts of. Raises StoreError."""
    if public.get("formatVersion") != FORMAT_VERSION:
        raise StoreError(
            f"the listing is of format {public.get('formatVersion')!r}, this initializer "
            f"reads {FORMAT_VERSION}: build the image again (make images)"
        )
    store = dict(public["store"])
    kind = store.pop("kind")
    if private.get("kind") != kind:
        raise StoreError(f"the listing is of a {kind} store, its secret of {private.get('kind')}")
    location: Any
    if kind == "s3":
        from .s3 import Location
        from .secrets import ObjectStoreSecret

        secret = store["secret"]
        body = {k: v for k, v in secret.items() if k not in ("name", "resourceGroup")}
        credentials = ObjectStoreSecret.from_json(
            secret["name"], secret["resourceGroup"], {**body, "data": private["data"]}
        )
        location = Location(credentials, store["prefix"], bool(store.get("ranges", True)))
    elif kind == "https":
        from .https import HttpLocation

        location = HttpLocation(url=private["url"], **store)
    else:
        raise StoreError(f"the storage initializer cannot download from a {kind} store")
    objects = tuple(StoredObject(str(k), int(s), str(e)) for k, s, e in public["objects"])
    listing = Listing(location, objects)
    if listing.version != public["version"]:
        raise StoreError(
            f"{location.describe()}: the listing's objects do not make the version it names"
        )
    return listing


def fetch(cache: Path, listing_file: Path, private_file: Path) -> str:
    public = json.loads(listing_file.read_text())
    private = json.loads(private_file.read_text())
    listing = join(public, private)
    where = listing.location.describe()
    models = ModelCache(cache)
    if models.has(listing.version):
        models.fetch(listing)  # (used now: the last to be evicted)
        return f"model {listing.version[:12]} already in {cache}"
    print(
        f"downloading {where}: {len(listing.objects)} objects, {_mb(listing.size)} into "
        f"{cache}/{listing.version[:12]}…",
        flush=True,
    )
    started = time.monotonic()
    models.fetch(listing, progress=_Reporter())
    seconds = time.monotonic() - started
    return f"model {listing.version[:12]} downloaded: {_mb(listing.size)} in {seconds:.1f}s"


def evict(cache: Path, remove: Sequence[str], keep: Sequence[str]) -> str:
    """Remove exactly `remove` (the reconciler chose them, least recently used first) and
    unfinished downloads of versions not in `keep`."""
    models = ModelCache(cache)
    gone = set(remove) - set(keep)
    others = {version for version, _, _ in models.entries()} - gone
    removed = models.evict(0, others | set(keep))
    return f"evicted {len(removed)} model(s) from {cache}: {' '.join(sorted(removed)) or '-'}"


def mkdir(folder: Path) -> str:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    return f"cache folder {folder} is there"


class _Reporter:
    """A progress line every EVERY seconds (a task's log shows how far it got)."""

    EVERY = 5.0

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.EVERY and total:
            self.last = now
            print(f"{100 * done // total}% ({_mb(done)} of {_mb(total)})", flush=True)


def _mb(count: float) -> str:
    return f"{count / 1e6:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="initializer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("fetch", help="download a listing's model into the cache")
    one.add_argument("--cache", type=Path, required=True)
    one.add_argument("--listing", type=Path, required=True)
    one.add_argument("--private", type=Path, required=True)
    two = commands.add_parser("evict", help="remove versions from the cache")
    two.add_argument("--cache", type=Path, required=True)
    two.add_argument("--remove", nargs="*", default=[])
    two.add_argument("--keep", nargs="*", default=[])
    three = commands.add_parser("mkdir", help="make the cache folder")
    three.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            said = fetch(args.cache, args.listing, args.private)
        elif args.command == "evict":
            said = evict(args.cache, args.remove, args.keep)
        else:
            said = mkdir(args.folder)
    except StoreError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return FAILED
    except OSError as exc:
        print(f"{args.command}: {one_line(exc)}", file=sys.stderr, flush=True)
        return FAILED
    except Exception as exc:  # the one line a job's failure shows: never a traceback
        print(
            f"{args.command}: unexpected {type(exc).__name__}: {one_line(exc)}",
            file=sys.stderr,
            flush=True,
        )
        return UNEXPECTED
    print(said, flush=True)
    return 0


if __name__ == "__main__":
    os.umask(0o022)  # the model containers read the cache as another user
    sys.exit(main())
