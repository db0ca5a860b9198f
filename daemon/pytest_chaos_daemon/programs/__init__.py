"""Programs the daemon runs in a target's network namespace: the packet queue and the DNS responder."""
