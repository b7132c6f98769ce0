"""/v2/lm/meta: what this AI API runtime is and can do (AI Core's capabilities document)."""

from typing import Any

from fastapi import APIRouter

from ...core.lifecycle import TTL_MINIMUM_MINUTES
from ..context import CallerDep

router = APIRouter(prefix="/v2/lm")

API_VERSION = "2.42.0"  # the AI API version whose shapes this one follows


@router.get("/meta")
def meta(who: CallerDep) -> dict[str, Any]:
    return {
        "runtimeIdentifier": "reconciler",
        "runtimeApiVersion": API_VERSION,
        "description": "GitOps reconciler for AI Core-style model deployments on Docker",
        "aiApi": {
            "version": API_VERSION,
            "capabilities": {
                "multitenant": True,
                "shareable": False,
                "staticDeployments": True,
                "userDeployments": True,
                "userExecutions": False,
                "timeToLiveDeployments": True,
                "executionSchedules": False,
                "logs": {"deployments": True, "executions": False},
                "bulkUpdates": {"deployments": True, "executions": False},
            },
            "limits": {
                "deployments": {"maxRunningCount": -1},
                "executions": {"maxRunningCount": 0},
                "minimumFrequencyHour": 0,
                "timeToLiveDeployments": {
                    "minimum": f"{TTL_MINIMUM_MINUTES}m",
                    "maximum": "-1",
                },
            },
        },
        "extensions": {},
    }
