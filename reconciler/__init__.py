"""reconciler: a GitOps reconciler for SAP AI Core-style model deployments on Docker hosts.

Pipeline, one module per step: load → render → observe → plan → apply → record; `cli` and
`server` are thin faces over the same core functions.
"""

__version__ = "0.1.0"
