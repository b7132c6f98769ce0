"""reconciler: a GitOps reconciler for SAP AI Core-style model deployments on Docker hosts.

The pipeline is load → render → observe → plan → apply → record, laid out in layers, each
importing only from the layers below it (checked by `lint-imports` in `make lint`):

    cli        the command line                              (face)
    serve      `reconciler serve`: HTTP front, gateway       (face)
    api        the AI API (/v2/lm) and its write-back        (face)
    core       observe → plan → apply → record, lifecycle rules, status, watch
    backends   the engines (Docker) behind one interface; the only code that talks to one
    manifests  load → render: files, schemas, kinds, cross-checks, container specs

`errors` and `files` are shared by all.
"""

__version__ = "0.1.0"
