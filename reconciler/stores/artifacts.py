"""An artifact URL's listing, whatever store it names: `ai://` and `s3://` through an
object-store secret (reconciler.stores.s3), `https://` from a web server without credentials
(reconciler.stores.https). A pin (`?version=`) is no part of where the model is: each store's
parser leaves it out."""

from __future__ import annotations

from . import https, s3
from .listing import Listing
from .secrets import ObjectStoreSecrets


def list_artifact(url: str, resource_group: str, secrets: ObjectStoreSecrets) -> Listing:
    """What is at `url` now (its objects and version). Raises StoreError (one line)."""
    if url.split(":", 1)[0].lower() == "https":
        return https.listing(url)
    return s3.listing(s3.locate(url, resource_group, secrets))
