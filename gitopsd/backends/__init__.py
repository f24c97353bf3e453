"""Backends: the protocol every backend implements, and the built-in `local` backend.

Third-party backends (such as `gitopsd_slurm` and `gitopsd_nvidia` in this repository's `backends/` folder) are
separate distributions found through the `gitopsd.backends` entry-point group, like `local` is. This package
imports only the vocabulary.
"""
