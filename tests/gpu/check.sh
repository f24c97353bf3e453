#!/usr/bin/env bash
# The nvidia backend on a real NVIDIA GPU, end to end: run on a machine with a GPU, its driver and PyTorch.
#
#   tests/gpu/check.sh            # uses .venv/bin/python for gitopsd (with backends/nvidia installed)
#   TORCH_PYTHON=/opt/torch/bin/python tests/gpu/check.sh   # the Python that has PyTorch, if not python3
#
# Run it as the daemon's service account, not as root (see "confinement" in docs/security.md).
#
# It creates the demo repository (gitopsd init), switches its model to an nvidia backend with `gpus: 1` and a
# small PyTorch training on cuda that writes metrics and a model artifact, runs `gitopsd reconcile --wait`,
# and checks that version blobs@1 was registered and that its lineage names the GPU it ran on (name and UUID,
# as nvidia-smi reports them) and the driver version, and that a CUDA training runs under a host memory limit.
# Prints PASS or FAIL; exits non-zero on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gitopsd-gpu-check.XXXXXX")
export GITOPSD_STATE_DIR=$WORK/state
REPO=$WORK/repo

fail() {
    echo "FAIL: $*"
    echo "(work directory kept for inspection: $WORK)"
    exit 1
}
gitopsd() { "$PY" -m gitopsd "$@"; }

echo "== prerequisites"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
nvidia-smi -L || fail "nvidia-smi lists no GPU"
"$PY" -c "import gitopsd_nvidia, pynvml" || fail "$PY lacks gitopsd-nvidia: run make install (or pip install -e backends/nvidia)"
TRAIN_PY=""
for candidate in "${TORCH_PYTHON:-}" python3 "$PY"; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        TRAIN_PY=$(command -v "$candidate")
        break
    fi
done
[ -n "$TRAIN_PY" ] || fail "no Python with PyTorch and CUDA found (set TORCH_PYTHON=/path/to/python)"
echo "training Python: $TRAIN_PY (torch $("$TRAIN_PY" -c 'import torch; print(torch.__version__)'))"

echo "== the GPUs as gitopsd sees them (NVML)"
"$PY" -c "from gitopsd_nvidia.inventory import read_inventory, render_table; print(render_table(read_inventory()), end='')" \
    || fail "NVML inventory could not be read"

echo "== confinement (Landlock) on this kernel"
LANDLOCK=$("$PY" -c "
from gitopsd.backends.local.landlock import probe
p = probe()
print('true' if p.abi >= 3 else 'false')
print(f'Landlock ABI {p.abi}' if p.abi else f'no Landlock: {p.reason}')
")
echo "$LANDLOCK" | tail -n 1
CONFINE=$(echo "$LANDLOCK" | head -n 1)
if [ "$CONFINE" != true ]; then
    echo "note: this kernel cannot confine trainings, so this check runs them unconfined (confine = false)"
elif [ "$(id -u)" = 0 ]; then
    fail "run this as the daemon's service account, not root: a root daemon's confined trainings keep /proc read-only, and CUDA cannot start without writing its thread names there"
fi

echo "== the demo, switched to the nvidia backend"
gitopsd init "$REPO" >/dev/null
SHA=$(sed -n 's/^ *sha256: "\(.*\)"$/\1/p' "$REPO/models/blobs.yaml")
[ -n "$SHA" ] || fail "could not read the data digest from the demo model"
# The operator offers the GPUs: backends are the operator's configuration, never the repository's.
export GITOPSD_CONFIG="$WORK/config.toml"
cat >"$GITOPSD_CONFIG" <<EOF
[backends.local]
type = "local"

[backends.gpu]
type = "nvidia"
settings = { telemetry_interval_s = 1, confine = $CONFINE }
EOF
cat >"$REPO/gitops.yaml" <<EOF
apiVersion: gitopsd/v1
kind: Repository
defaults:
  backend: gpu
  timeout: 15m
EOF
cat >"$REPO/models/blobs.yaml" <<EOF
apiVersion: gitopsd/v1
kind: Model
metadata:
  name: blobs
spec:
  train:
    backend: gpu
    command: $TRAIN_PY train_torch.py --epochs 150 --lr 0.5
    workdir: src
    resources:
      gpus: 1
      memory: 8Gi   # sampled, not an rlimit: a CUDA process must train under it
  data:
    - uri: data/blobs.csv
      sha256: "$SHA"
  outputs:
    artifact: model.pt
    metrics: metrics.jsonl
  validate:
    - accuracy >= 0.9
    - loss < 0.5
EOF
cat >"$REPO/src/train_torch.py" <<'EOF'
"""Logistic regression of the demo blobs with PyTorch on the one GPU gitopsd gave this run."""

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=100)
parser.add_argument("--lr", type=float, default=0.5)
args = parser.parse_args()

visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
assert torch.cuda.is_available(), f"CUDA is not available (CUDA_VISIBLE_DEVICES={visible!r})"
assert torch.cuda.device_count() == 1, f"expected exactly the one GPU gitopsd leased, see {torch.cuda.device_count()}"
device = torch.device("cuda")
print(f"CUDA_VISIBLE_DEVICES={visible} device={torch.cuda.get_device_name(0)}", flush=True)

with open("../data/blobs.csv", newline="") as handle:
    rows = list(csv.DictReader(handle))
x = torch.tensor([[float(r["x1"]), float(r["x2"])] for r in rows], device=device)
y = torch.tensor([float(r["label"]) for r in rows], device=device)
model = torch.nn.Linear(2, 1).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
out = Path(os.environ["GITOPSD_OUTPUT_DIR"])
metrics = Path(os.environ["GITOPSD_METRICS_FILE"])
for epoch in range(1, args.epochs + 1):
    optimizer.zero_grad()
    logits = model(x).squeeze(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    loss.backward()
    optimizer.step()
    accuracy = ((logits > 0).float() == y).float().mean().item()
    with metrics.open("a") as handle:
        handle.write(json.dumps({"epoch": epoch, "loss": loss.item(), "accuracy": accuracy}) + "\n")
    time.sleep(0.04)  # a few seconds in all, so that the daemon samples the GPU while it trains
torch.save(model.state_dict(), out / "model.pt")
print(f"done: loss {loss.item():.4f} accuracy {accuracy:.3f}", flush=True)
EOF
"$PY" -c "import sys; from pathlib import Path; from gitopsd.cli.scaffold import commit_all; commit_all(Path(sys.argv[1]), 'Train on the GPU with PyTorch')" "$REPO"
gitopsd validate "$REPO" || fail "the switched demo does not validate"

echo "== gitopsd reconcile --wait"
gitopsd reconcile --repo "$REPO" --wait --timeout 900 || { gitopsd status || true; gitopsd logs blobs || true; fail "reconcile did not settle"; }
gitopsd status
gitopsd logs blobs | tail -n 5 || true

echo "== lineage of blobs@1"
gitopsd registry show blobs@1 >"$WORK/version.json" || fail "blobs@1 was not registered"
nvidia-smi --query-gpu=name,uuid,driver_version --format=csv,noheader >"$WORK/smi.csv"
"$PY" - "$WORK/version.json" "$WORK/smi.csv" "$WORK/gpu.txt" <<'EOF' || fail "the lineage of blobs@1 does not name the GPU"
import json, sys
version = json.load(open(sys.argv[1]))
job = version["lineage"]["job"]
smi = [tuple(field.strip() for field in line.split(",")) for line in open(sys.argv[2]) if line.strip()]
gpus = job.get("gpus") or []
print("backend:", job.get("backend"), "job:", version["lineage"].get("job_id"))
print("gpus:", json.dumps(gpus))
print("driver:", job.get("driver_version"), "CUDA:", job.get("cuda_version"))
print("peak host memory:", job.get("peak_memory_mb"), "MiB of the 8 GiB limit")
print("CPUs bound to:", job.get("cpus") or "none (one NUMA node, or NVML cannot tell)")
assert job.get("peak_memory_mb"), "the run's peak host memory was not recorded"
assert job.get("backend") == "nvidia", f"job backend is {job.get('backend')!r}, not nvidia"
assert len(gpus) == 1, f"expected one GPU in the lineage, found {gpus}"
by_uuid = {uuid: (name, driver) for name, uuid, driver in smi}
gpu = gpus[0]
parent = gpu.get("parent_uuid") or gpu["uuid"]
assert parent in by_uuid, f"GPU {gpu['uuid']} is not one nvidia-smi lists: {sorted(by_uuid)}"
name, driver = by_uuid[parent]
assert name in gpu["name"], f"lineage names {gpu['name']!r}, nvidia-smi says {name!r}"
assert job.get("driver_version") == driver, f"driver {job.get('driver_version')!r} != nvidia-smi {driver!r}"
with open(sys.argv[3], "w") as handle:
    handle.write(f"{gpu['name']} ({gpu['uuid']}), driver {job.get('driver_version')}, CUDA {job.get('cuda_version')}")
metrics = version.get("metrics", {})
print("metrics:", json.dumps(metrics))
if "gpu_mem_mb" not in metrics:
    print("note: no GPU telemetry sample reached the metrics (the training may have been too short)")
EOF

echo "PASS: blobs@1 was trained by the nvidia backend on $(cat "$WORK/gpu.txt"), as its lineage records"
rm -rf "$WORK"
