"""The model registry: numbered immutable versions, artifact stores (file, S3), aliases, audit tags, promote.

A version is written once and never changed; its bytes are content-addressed in a store, and every version and
alias move is also a JSON record in the store, so the registry can be rebuilt. It may import the source (audit
tags, promote), the spec and the vocabulary, never the reconciler.
"""
