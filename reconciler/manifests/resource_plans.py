"""Resource plans: named CPU/memory/GPU bundles, as in AI Core's (AWS) resource plan table."""

from __future__ import annotations

import re

from .kinds import ResourcePlan

DEFAULT_PLAN = "starter"

_GIB = 1024**3
BUILTIN: dict[str, ResourcePlan] = {
    p.name: p
    for p in (
        ResourcePlan("starter", 1.0, 3 * _GIB, 0, description="1 vCPU, 3 GB"),
        ResourcePlan("basic", 3.0, 11 * _GIB, 0, description="3 vCPU, 11 GB"),
        ResourcePlan("basic.8x", 31.0, 116 * _GIB, 0, description="31 vCPU, 116 GB"),
        ResourcePlan("train.l", 7.0, 55 * _GIB, 1, "V100", "1 V100, 7 vCPU, 55 GB"),
        ResourcePlan("infer.s", 3.0, 10 * _GIB, 1, "T4", "1 T4, 3 vCPU, 10 GB"),
        ResourcePlan("infer.m", 7.0, 26 * _GIB, 1, "T4", "1 T4, 7 vCPU, 26 GB"),
        ResourcePlan("infer.l", 15.0, 58 * _GIB, 1, "T4", "1 T4, 15 vCPU, 58 GB"),
    )
}

_UNITS = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|K|M|G|T)$")


def parse_memory(text: str) -> int:
    """Bytes of a Kubernetes-style quantity such as `512Mi` or `3G` (schema-checked input)."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a memory quantity: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])
