"""Manifests: what a GitOps root declares, loaded, checked and rendered (load → render).

Pure functions over files: nothing here knows of an engine or of the state. `desired` is the
layer's output, every deployment with its resolved `spec.ContainerSpec`.
"""
