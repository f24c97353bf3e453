"""The Git source: the bare mirror of a tracked repository, remote credentials and SSH transport.

It fetches, resolves commits and reads blobs and trees; it knows which files are specs from `gitopsd.spec`, and
imports nothing else above the vocabulary.
"""
