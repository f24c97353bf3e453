"""The read-only web dashboard (`/ui`): an HTTP shell (`app`, `routing`, `session`, `assets`) over the documents
of `views`, which read the state directories of the repositories it shows and change nothing."""
