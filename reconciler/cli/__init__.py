"""The command line (`reconciler ...`), a thin face over the core, and its human output."""
