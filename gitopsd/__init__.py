"""gitopsd: a GitOps daemon that trains the models a Git repository declares and registers them as versions."""

__version__ = "0.1.0"
