"""gitopsd: a GitOps daemon that trains the models a Git repository declares and registers them as versions.

One folder per subsystem, imports pointing downwards: `cli`, `daemon`, `reconcile`, `registry`, then `source`
and `backends`, then `spec`; `model`, `errors` and `units` are the vocabulary all of them share. See
docs/architecture.md.
"""

__version__ = "0.1.0"
