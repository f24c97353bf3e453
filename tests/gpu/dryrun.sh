#!/usr/bin/env bash
# Dry run of tests/gpu/check.sh on a machine without an NVIDIA GPU, for whoever edits that script.
#
#   TORCH_PYTHON=/path/to/python tests/gpu/dryrun.sh    # a Python with PyTorch; the CPU build is enough
#
# Three stand-ins replace what only a GPU machine has, each at its narrowest point: an `nvidia-smi` that lists
# one H100, the tests' fake NVML (tests/nvidia/fake_nvml.py) installed in gitopsd's Python by a sitecustomize,
# and a sitecustomize in the training's Python that makes PyTorch report one CUDA device and run "cuda"
# tensors on the CPU. Everything else is real: gitopsd init, the nvidia backend, the supervisor, the PyTorch
# training, the registry and the lineage check. A PASS here proves the script's plumbing, not the GPU: only
# check.sh on real hardware does that.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
: "${TORCH_PYTHON:?set TORCH_PYTHON to a Python that has PyTorch (the CPU build is enough)}"
STANDINS=$(mktemp -d "${TMPDIR:-/tmp}/gitopsd-gpu-dryrun.XXXXXX")
trap 'rm -rf "$STANDINS"' EXIT
mkdir -p "$STANDINS/bin" "$STANDINS/nvml-site" "$STANDINS/torch-site"

UUID=$("$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from tests.nvidia.fake_nvml import gpu_uuid; print(gpu_uuid(0))" "$ROOT")
DRIVER=$("$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from tests.nvidia.fake_nvml import FakeMachine; print(FakeMachine(gpus=[]).driver_version)" "$ROOT")
cat >"$STANDINS/bin/nvidia-smi" <<EOF
#!/bin/sh
case "\$*" in
  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: $UUID)" ;;
  *) echo "NVIDIA H100 80GB HBM3, $UUID, $DRIVER" ;;
esac
EOF
cat >"$STANDINS/nvml-site/sitecustomize.py" <<EOF
import sys
sys.path.insert(0, "$ROOT")
from tests.nvidia.fake_nvml import FakeMachine, h100, install
install(FakeMachine(gpus=[h100(0)]))
EOF
cat >"$STANDINS/torch-site/sitecustomize.py" <<'EOF'
import torch
def _on_cpu(device):
    return "cpu" if device is not None and str(device).startswith("cuda") else device
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_name = lambda index=0: "NVIDIA H100 80GB HBM3 (CPU stand-in)"
_tensor, _module_to = torch.tensor, torch.nn.Module.to
torch.tensor = lambda *a, device=None, **k: _tensor(*a, device=_on_cpu(device), **k)
torch.nn.Module.to = lambda self, *a, **k: _module_to(self, *(_on_cpu(x) for x in a), **k)
EOF
printf '#!/bin/sh\nPYTHONPATH=%s exec %s "$@"\n' "$STANDINS/nvml-site" "$PY" >"$STANDINS/bin/gitopsd-python"
printf '#!/bin/sh\nPYTHONPATH=%s exec %s "$@"\n' "$STANDINS/torch-site" "$TORCH_PYTHON" >"$STANDINS/bin/torch-python"
chmod +x "$STANDINS/bin/"*

PATH=$STANDINS/bin:$PATH PYTHON=$STANDINS/bin/gitopsd-python TORCH_PYTHON=$STANDINS/bin/torch-python \
    bash "$ROOT/tests/gpu/check.sh"
