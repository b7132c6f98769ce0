"""The host's own network addresses, for backends that can skip their engine's port proxy.

A replica on a bridge network is reachable at its own address from a host that owns the
bridge's gateway address (rootful Docker on Linux: the host is the bridge's other end).
"""

from __future__ import annotations

import socket


def host_owns(address: str) -> bool:
    """Whether `address` is one of this host's own (binding to it succeeds only then)."""
    if not address:
        return False
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True
