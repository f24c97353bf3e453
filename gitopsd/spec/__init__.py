"""Spec files: the Repository and Model kinds, their field types, validation gates, loading and the JSON Schema.

Everything a team writes in its Git repository is parsed and explained here, with file, line and field in every
error. Pure parsing: it imports only the vocabulary (`gitopsd.model`, `errors`, `units`), never Git or a backend.
"""
