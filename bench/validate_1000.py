"""Benchmark: `reconciler validate` on a generated repository of N deployments.

Generates N configurations and N deployments (plus artifacts) over two templates, one in each
ServingTemplate form, then times the whole CLI command (interpreter start included) and the
in-process core function. Target (issue 2): under 1 s wall time for 1000 deployments.

    python bench/validate_1000.py [N]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TEMPLATES = """\
apiVersion: ai.sap.com/v1alpha1
kind: ServingTemplate
metadata:
  name: bench-kserve
  labels:
    scenarios.ai.sap.com/id: bench
    ai.sap.com/version: "1.0"
spec:
  inputs:
    parameters:
      - name: greeting
        default: hello
      - name: replicas
        default: "1"
    artifacts:
      - name: model
  template:
    apiVersion: serving.kserve.io/v1beta1
    metadata:
      labels: |
        ai.sap.com/resourcePlan: starter
    spec: |
      predictor:
        minReplicas: {{inputs.parameters.replicas}}
        containers:
        - name: kserve-container
          image: bench/server:1
          ports:
            - containerPort: 8080
          env:
            - name: STORAGE_URI
              value: "{{inputs.artifacts.model}}"
            - name: GREETING
              value: "{{inputs.parameters.greeting}}"
---
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: bench-container
spec:
  scenarioId: bench
  inputs:
    parameters:
      - name: greeting
        default: hello
    artifacts:
      - name: model
  container:
    image: bench/server:1
    env:
      GREETING: "{{ inputs.parameters.greeting }}"
    modelArtifact: model
    resourcePlan: starter
"""


def generate(root: Path, n: int) -> None:
    (root / "templates").mkdir(parents=True)
    (root / "manifests").mkdir()
    (root / "templates" / "bench.yaml").write_text(TEMPLATES)
    per_file = 100
    for start in range(0, n, per_file):
        docs = []
        for i in range(start, min(n, start + per_file)):
            template = "bench-kserve" if i % 2 else "bench-container"
            docs.append(f"""\
apiVersion: reconciler/v1
kind: Artifact
metadata:
  name: model-{i:05d}
spec:
  kind: model
  url: file:models/m{i}
  scenarioId: bench
---
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: config-{i:05d}
spec:
  executableId: {template}
  scenarioId: bench
  parameterBindings:
    - key: greeting
      value: "hello {i}"
  inputArtifactBindings:
    - key: model
      artifactId: model-{i:05d}
---
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: deploy-{i:05d}
spec:
  configurationId: config-{i:05d}
""")
        (root / "manifests" / f"part-{start // per_file:03d}.yaml").write_text("---\n".join(docs))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    exe = shutil.which("reconciler") or str(Path(sys.executable).parent / "reconciler")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        generate(root, n)
        cli_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = subprocess.run(
                [exe, "validate", "--root", str(root)], capture_output=True, text=True
            )
            cli_times.append(time.perf_counter() - t0)
            if out.returncode != 0:
                sys.exit(f"validate failed:\n{out.stdout}{out.stderr}")
        from reconciler.manifests.desired import desired_state

        core_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            state = desired_state(root)
            core_times.append(time.perf_counter() - t0)
        assert len(state.deployments) == n
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_start = time.perf_counter() - t0
    cli = statistics.median(cli_times)
    print(f"validate, {n} deployments ({3 * n} documents, 2 templates)")
    print(
        f"  CLI wall time (median of 5):       {cli * 1000:7.1f} ms   target < 1000 ms: "
        f"{'OK' if cli < 1 else 'MISSED'}"
    )
    print(f"  core desired_state() (median of 5): {statistics.median(core_times) * 1000:7.1f} ms")
    print(
        f"  bare python start (peer):          {python_start * 1000:7.1f} ms   "
        f"ratio CLI/python start: {cli / python_start:.1f}x"
    )


if __name__ == "__main__":
    main()
