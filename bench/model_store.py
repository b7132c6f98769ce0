"""Benchmark: models from an object store (issue 18) against their peers, in one run.

Setup: a real S3-compatible server (`s3s-fs`, installed by scripts/ensure-s3s-fs) on a free
loopback port over a temporary folder; a model folder of about 200 MB (the churn model plus a
weights file of random bytes, which the model server ignores) uploaded to a bucket; an
object-store secret for it in a temporary config folder; a temporary GitOps root with the
project's churn template.

1. Download: `ModelCache.fetch` (the storage initializer: list, download each object with
   boto3's transfer manager, check sizes and MD5 ETags, rename into place) into an empty cache,
   against a plain boto3 `download_file` of the same objects (the peer), `--rounds` rounds each,
   interleaved. Target: within 1.2x of the peer (median).
2. Start-to-ready, each a `reconciler reconcile` of one new deployment of the model (the
   container's start and readiness included): the first from S3 (download), a second
   deployment of the same model (the cache: no download), and the same model as a `file:`
   artifact. Target: the cached start within 1.1x of the `file:` start.

    scripts/build-images                        # the runtime image and models/churn/1
    .venv/bin/python bench/model_store.py [--rounds 3] [--megabytes 200]

The weights file is uploaded the way boto3 uploads large files, in parts: its ETag is then
not an MD5, so only its size is checked; single-part objects are MD5-checked too (that read
costs about 0.45 s per 200 MB here).

Everything made (containers of the bench's instance, the server, the folders) is removed at the
end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from reconciler.stores.cache import ModelCache  # noqa: E402
from reconciler.stores.s3 import client, listing, locate  # noqa: E402
from reconciler.stores.secrets import ObjectStoreSecret, ObjectStoreSecrets  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret-0123456789"
TARGET_DOWNLOAD = 1.2
TARGET_CACHED = 1.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ok(good: bool) -> str:
    return "OK" if good else "NOT OK"


def reconcile(root: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "reconcile", "--root", str(root)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"reconcile failed: {done.stdout}{done.stderr}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    binary = subprocess.run(
        [PROJECT / "scripts/ensure-s3s-fs"], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    instance = f"bench-st-{uuid.uuid4().hex[:8]}"
    port = free_port()
    (work / "s3").mkdir()
    server = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", KEY,
         "--secret-key", SECRET, str(work / "s3")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(work / "config"),
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("s3s-fs did not start") from None
                time.sleep(0.05)
        # The model folder: churn v1 plus random weights.
        model = work / "root/models/big"
        model.mkdir(parents=True)
        for f in (PROJECT / "models/churn/1").iterdir():
            shutil.copy(f, model / f.name)
        with open(model / "weights.bin", "wb") as out:
            for _ in range(args.megabytes):
                out.write(os.urandom(1024 * 1024))
        size = sum(f.stat().st_size for f in model.iterdir())
        secret = ObjectStoreSecret(
            "bench", "default", "models", KEY, SECRET, endpoint=f"http://127.0.0.1:{port}"
        )
        secrets = ObjectStoreSecrets(work / "config/reconciler" / instance / "objectstores.json")
        secrets.put(secret)
        s3 = client(secret)
        s3.create_bucket(Bucket="models")
        for f in model.iterdir():
            s3.upload_file(str(f), "models", f"big/{f.name}")
        found = listing(locate("ai://bench/big", "default", secrets))
        print(f"model: {size / 1e6:.0f} MB in {len(found.objects)} objects; s3s-fs at :{port}")

        # 1. Download: the initializer against plain boto3, interleaved.
        ours, peer = [], []
        for n in range(args.rounds):
            target = work / f"peer-{n}"
            target.mkdir()
            started = time.monotonic()
            for o in found.objects:
                s3.download_file("models", o.key, str(target / o.key.split("/")[-1]))
            peer.append(time.monotonic() - started)
            shutil.rmtree(target)
            cache = ModelCache(work / f"cache-{n}")
            started = time.monotonic()
            cache.fetch(found)
            ours.append(time.monotonic() - started)
            shutil.rmtree(cache.root)
            print(f"  round {n + 1}: boto3 {peer[-1]:.2f} s, initializer {ours[-1]:.2f} s")

        # 2. Start-to-ready through reconcile: from S3 (download), cached, file:.
        root = work / "root"
        (root / "manifests").mkdir()
        shutil.copytree(PROJECT / "templates", root / "templates")
        (root / "manifests/settings.yaml").write_text(
            f"apiVersion: reconciler/v1\nkind: Settings\nmetadata: {{name: host}}\n"
            f"spec: {{instance: {instance}}}\n"
        )
        docs = []
        starts: dict[str, float] = {}
        for name, url in (
            ("from-s3", "ai://bench/big"),
            ("cached", "ai://bench/big"),
            ("from-file", "file:models/big"),
        ):
            docs.append(
                f"""
apiVersion: reconciler/v1
kind: Artifact
metadata: {{name: art-{name}}}
spec: {{kind: model, url: "{url}", scenarioId: churn}}
---
apiVersion: reconciler/v1
kind: Configuration
metadata: {{name: cfg-{name}}}
spec:
  executableId: churn-serving
  scenarioId: churn
  versionId: "1"
  inputArtifactBindings: [{{key: churnmodel, artifactId: art-{name}}}]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {{name: dep-{name}}}
spec: {{configurationId: cfg-{name}}}
"""
            )
            (root / "manifests/app.yaml").write_text("---".join(docs))
            starts[name] = reconcile(root, env)
            print(f"  {name}: reconcile to RUNNING {starts[name]:.2f} s")

        share = statistics.median(ours) / statistics.median(peer)
        cached = starts["cached"] / starts["from-file"]
        print()
        print(f"1. Download of {size / 1e6:.0f} MB (medians of {args.rounds})")
        print(f"   plain boto3 download_file   {statistics.median(peer):6.2f} s")
        print(f"   storage initializer         {statistics.median(ours):6.2f} s   ({share:.2f}x)")
        print(f"   target: within {TARGET_DOWNLOAD}x of boto3: {ok(share <= TARGET_DOWNLOAD)}")
        print("2. Start to ready (reconcile of one new deployment)")
        print(f"   first start from S3 (download)  {starts['from-s3']:6.2f} s")
        print(f"   second deployment, cached       {starts['cached']:6.2f} s")
        print(f"   file: artifact                  {starts['from-file']:6.2f} s")
        print(
            f"   target: cached within {TARGET_CACHED}x of file: ({cached:.2f}x): "
            f"{ok(cached <= TARGET_CACHED)}"
        )
    finally:
        server.terminate()
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=reconciler.instance={instance}"],
            capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
