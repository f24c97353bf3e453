"""The `gitopsd` command line: argparse commands over the reconciler, the registry and the daemon.

A thin shell: each command imports only what it needs, so `gitopsd status` stays fast. It sits on top; nothing
in gitopsd imports it.
"""
