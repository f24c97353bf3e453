"""`gitopsd run`: the long-running service and its configuration, triggers, webhooks, HTTP API and metrics.

It owns one reconcile worker per repository and everything that wakes it; it imports the reconciler and below,
and nothing imports it but the command line.
"""
