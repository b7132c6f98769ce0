"""The AI API's endpoints, one APIRouter per resource; reconciler.api.app includes them in
ROUTERS' order (which is also their order in the OpenAPI document)."""

from . import (
    artifacts,
    configurations,
    deployments,
    logs,
    meta,
    oauth,
    objectstores,
    scenarios,
)

ROUTERS = (
    scenarios.router,
    configurations.router,
    artifacts.router,
    deployments.router,
    logs.router,
    objectstores.router,
    meta.router,
    oauth.router,
)
