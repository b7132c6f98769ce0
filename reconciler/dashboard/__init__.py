"""The web dashboard of `reconciler serve` at /ui/: what runs, whether it is in sync with git,
what the next reconcile would change, and what a deployment does now. Server-rendered (Jinja2,
autoescaped), usable without JavaScript; a small script of its own adds the live log tail and
refreshes the charts. Nothing is fetched from elsewhere (air-gapped sites).

A face over the same core as the AI API, with the same clients and tenancy: a client signs in
with its id and secret (its token then rides in an HttpOnly, SameSite=Strict cookie), sees
only its resource groups, and acts (stop a deployment, reconcile now) only when it may write,
through the API's own write-back (a git commit), each form carrying a CSRF token.
"""

from .routes import Dashboard, mount

__all__ = ["Dashboard", "mount"]
