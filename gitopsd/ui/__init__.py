"""The read-only web dashboard (`/ui`): what every repository and model is, their curves, lineage and cluster.

This layer sits between `daemon`/`cli` (which serve it) and `reconcile`/`registry` (whose state it reads). An HTTP
shell (`app`, `routing`, `session`, `assets`) serves the static page (`static/`) and the documents of `views`. It
never writes a state directory: every database is opened with a `mode=ro` URI, every file a repository or a
training wrote is read bounded and without following links, and every string shown passes through
`gitopsd.source.redact`. The documents it builds are plain JSON data; the page puts them in with textContent.
"""
