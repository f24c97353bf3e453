"""The built-in `local` backend: trainings as supervised processes on the daemon's own host.

The backend starts a detached supervisor per run, which holds the training to its memory limit, builds its
virtualenv and confines it with Landlock to its run, the system and its Python (`confine`, `landlock`). It
imports only the backend protocol and the vocabulary, like any plugin.
"""
