"""The core: observe → plan → apply → record, AI Core's lifecycle rules, status and watch.

`plan` and `lifecycle` are pure; `apply` carries a plan out through a backend
(`reconciler.backends`); only `record` writes the state.
"""
