"""`reconciler serve`: the HTTP/1.1 front (relay), the inference gateway and its routing table,
metrics, and the server that runs them with the AI API and a background reconciler."""
