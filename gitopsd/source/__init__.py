"""The Git source: the bare mirror of a tracked repository, remote credentials, SSH transport, and the check
that new commits are signed by allowed keys (an operator option).

It fetches, resolves commits, verifies their signatures and reads blobs and trees; it knows which files are
specs from `gitopsd.spec`, and imports nothing else above the vocabulary.
"""
