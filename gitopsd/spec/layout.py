"""Where spec files live in a repository: `gitops.yaml` at its root and one file per model under `models/`.

The Git mirror, the working-tree validator and the desired-state loader all look for spec files the same way,
so the layout is said once, here.
"""

SPEC_DIR = "models"
REPO_SPEC = "gitops.yaml"


def is_spec_path(path: str) -> bool:
    """True for `gitops.yaml` and for model spec files under `models/`."""
    return path == REPO_SPEC or (path.startswith(SPEC_DIR + "/") and path.endswith((".yaml", ".yml")))
