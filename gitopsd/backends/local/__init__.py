"""The built-in `local` backend: trainings as supervised processes on the daemon's own host.

The backend starts a detached supervisor per run, which holds the training to its memory limit and builds its
virtualenv. It imports only the backend protocol and the vocabulary, like any plugin.
"""
