"""The AI API of `reconciler serve` (AI Core's /v2/lm and /oauth/token): one router per
resource, its models and auth; writes are GitOps write-back (a validated, committed manifest)."""
