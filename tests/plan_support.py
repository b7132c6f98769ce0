"""Builders for daemon-free planner tests: a real GitOps root for the desired state, hand-made
replicas and records for what runs and what was recorded, and one call of the planner.

Nothing here talks to a Docker engine: the observed side is `Replica` and `Observed` values
built by hand, as a backend would report them (compose tests its reconciler the same way).
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.backends.base import Observed, Replica
from reconciler.core.autoscale import Decision
from reconciler.core.plan import Plan, plan
from reconciler.core.record import Record, Snapshot, iso
from reconciler.manifests.desired import DesiredDeployment, DesiredState, desired_state
from reconciler.manifests.spec import Hashing

INSTANCE = "plan-test"
NOW = datetime(2030, 6, 15, 12, 0, 0, tzinfo=UTC)
IMAGE = "echo/server:1"
IMAGE_ID = "sha256:" + "1" * 64
LLM_IMAGE = "llm/server:1"
LLM_IMAGE_ID = "sha256:" + "2" * 64
# The instance's key for sealed secret values; no spec here has one unless a test adds it.
HASHING = Hashing(key=lambda: b"k" * 32)

TEMPLATES = """
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: echo-serving
spec:
  scenarioId: echo
  inputs:
    parameters:
      - {name: greeting, default: hello}
      - {name: replicas, default: "1"}
      - {name: plan, default: starter}
  container:
    image: "echo/server:1"
    env:
      GREETING: "{{ inputs.parameters.greeting }}"
    replicas: "{{ inputs.parameters.replicas }}"
    resourcePlan: "{{ inputs.parameters.plan }}"
---
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: other-serving
spec:
  scenarioId: other
  container:
    image: "echo/server:1"
---
apiVersion: reconciler/v1
kind: ServingTemplate
metadata:
  name: llm-serving
spec:
  scenarioId: foundation-models
  inputs:
    parameters:
      - {name: modelName}
      - {name: modelVersion, default: latest}
      - {name: weights, default: none}
  container:
    image: "llm/server:1"
    env:
      MODEL: "{{ inputs.parameters.modelName }}:{{ inputs.parameters.modelVersion }}"
      WEIGHTS: "{{ inputs.parameters.weights }}"
"""


def catalog(latest: str = "1.1", retire_10: str | None = None) -> str:
    """Model tiny-llm with versions 1.0 (replaced by 1.1) and 1.1; `latest` marks one."""
    retirement = f'\n      retirementDate: "{retire_10}"' if retire_10 else ""
    return f"""
apiVersion: reconciler/v1
kind: Model
metadata:
  name: tiny-llm
spec:
  executableId: llm-serving
  versions:
    - name: "1.0"
      isLatest: {"true" if latest == "1.0" else "false"}
      suggestedReplacements: ["1.1"]{retirement}
      parameters: {{weights: w10}}
    - name: "1.1"
      isLatest: {"true" if latest == "1.1" else "false"}
      parameters: {{weights: w11}}
"""


def configuration(
    name: str,
    executable: str = "echo-serving",
    scenario: str = "echo",
    group: str | None = None,
    **params: str,
) -> str:
    bindings = "".join(f'\n    - key: {k}\n      value: "{v}"' for k, v in params.items())
    if bindings:
        bindings = "\n  parameterBindings:" + bindings
    return f"""
apiVersion: reconciler/v1
kind: Configuration
metadata:
  name: {name}{_group(group)}
spec:
  executableId: {executable}
  scenarioId: {scenario}{bindings}
"""


def deployment(
    name: str,
    config: str,
    target: str | None = None,
    ttl: str | None = None,
    group: str | None = None,
) -> str:
    extra = (f"\n  targetStatus: {target}" if target else "") + (f"\n  ttl: {ttl}" if ttl else "")
    return f"""
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: {name}{_group(group)}
spec:
  configurationId: {config}{extra}
"""


def _group(group: str | None) -> str:
    return f"\n  resourceGroup: {group}" if group else ""


@dataclass
class Root:
    """A GitOps root under pytest's tmp_path; `declare` rewrites its manifests and returns the
    desired state they make."""

    path: Path
    templates: str = TEMPLATES

    def declare(
        self, *docs: str, models: str | None = None, gpus: Iterable[str] = ()
    ) -> DesiredState:
        listed = ", ".join(f'"{g}"' for g in gpus)
        gpu_line = f"\n  gpus: [{listed}]" if listed else ""
        settings = f"""
apiVersion: reconciler/v1
kind: Settings
metadata:
  name: host
spec:
  instance: {INSTANCE}{gpu_line}
"""
        files = {
            "templates/serving.yaml": self.templates,
            "manifests/settings.yaml": settings,
            "manifests/models.yaml": models if models is not None else catalog(),
        }
        app = self.path / "manifests/app.yaml"
        if docs:
            files["manifests/app.yaml"] = "---".join(docs)
        elif app.exists():
            app.unlink()  # an empty manifest file is itself an error
        for rel, text in files.items():
            path = self.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))
        return desired_state(self.path)


_ids = itertools.count(1)


def replica(
    d: DesiredDeployment,
    *,
    index: int = 0,
    state: str = "running",
    image_id: str | None = None,
    hashing: Hashing = HASHING,
    **fields: Any,
) -> Replica:
    """A replica of `d` as the backend reports one made from d's spec (so: current); keyword
    arguments override any field (an older spec's replica: build it from the older `d`)."""
    image_id = image_id or _image_id(d)
    identity = d.spec.identity(image_id, hashing)
    number = next(_ids)
    values: dict[str, Any] = {
        "id": f"{number:064x}",
        "name": f"{INSTANCE}-{d.name}-{index}-{number}",
        "deployment_id": d.id,
        "deployment_name": d.name,
        "resource_group": d.deployment.resource_group,
        "configuration_id": d.configuration.id,
        "replica": index,
        "config_hash": identity.config_hash,
        "hash_version": identity.version,
        "image_id": image_id,
        "fields": dict(identity.digests),
        "resources": d.spec.resources(),
        "gpus": (),
        "state": state,
        "status": "Up 5 minutes" if state == "running" else state,
        "host_ip": "127.0.0.1",
        "host_port": 40000 + number,
        "container_port": d.spec.port,
        "container_ip": "172.17.0.2",
        "network_gateway": "172.17.0.1",
        "created": 1_900_000_000 + number,
        "root": "",
        "revision": "",
        "model": d.model.label if d.model else "",
        "exit_code": 3 if state == "exited" else None,
    }
    values.update(fields)
    return Replica(**values)


def _image_id(d: DesiredDeployment) -> str:
    return LLM_IMAGE_ID if d.spec.image == LLM_IMAGE else IMAGE_ID


def config_hash(d: DesiredDeployment, image_id: str | None = None) -> str:
    return d.spec.identity(image_id or _image_id(d), HASHING).config_hash


def ago(**delta: float) -> str:
    """An ISO time `delta` before NOW, as records hold it."""
    return iso(NOW - timedelta(**delta)) or ""


def record(d: DesiredDeployment, **fields: Any) -> Record:
    """What the reconciler recorded for `d` after it came up RUNNING an hour ago."""
    values: dict[str, Any] = {
        "id": d.id,
        "name": d.name,
        "resource_group": d.deployment.resource_group,
        "status": "RUNNING",
        "configuration_id": d.configuration.id,
        "executable_id": d.template.name,
        "scenario_id": d.template.scenario_id,
        "latest_running_configuration_id": d.configuration.id,
        "ttl": d.deployment.ttl,
        "created_at": ago(hours=1),
        "start_time": ago(hours=1),
        "config_hash": config_hash(d),
        "replicas": d.spec.replicas,
    }
    values.update(fields)
    return Record(**values)


def planned(
    desired: DesiredState,
    *containers: Replica,
    records: Iterable[Record] = (),
    now: datetime = NOW,
    images: dict[str, str] | None = None,
    allow_empty: bool = False,
    scales: dict[str, Decision] | None = None,
    memory: int | None = None,
) -> Plan:
    observed = Observed(
        tuple(containers),
        images if images is not None else {IMAGE: IMAGE_ID, LLM_IMAGE: LLM_IMAGE_ID},
        memory,
    )
    snapshot = Snapshot(INSTANCE, {r.id: r for r in records})
    return plan(desired, observed, snapshot, now, allow_empty, hashing=HASHING, scales=scales)


def lines(p: Plan) -> list[str]:
    """The plan as `reconciler plan` prints its changes."""
    return [c.describe() for c in p.changes]
