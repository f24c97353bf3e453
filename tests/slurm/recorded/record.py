"""Record the outputs the pure parser tests read, from a real cluster started by tools/slurm/up.sh.

Run as root on a cluster with nothing else queued (it takes about two minutes: Slurm's own TIMEOUT needs a
one-minute limit to pass, and it briefly stops slurmctld to record what "controller down" looks like):

    tools/slurm/up.sh && set -a && . /tmp/gitopsd-slurm/env.sh && set +a
    .venv/bin/python tests/slurm/recorded/record.py

Tokens in the outputs are replaced by a fixed fake one; nothing else is edited.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
FAKE_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjIwMDAwMDAwMDAsImlhdCI6MTcwMDAwMDAwMCwic3VuIjoicm9vdCJ9.c2lnbmF0dXJl"
)
SACCT_FIELDS = "JobID,JobName,State,ExitCode,Start,End,NodeList,Partition,AllocTRES"
WORK = Path("/tmp/gitopsd-slurm-record")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {done.stderr}")
    return done


def rest(method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, str]:
    url = os.environ["SLURMRESTD_URL"] + "/slurm/v0.0.38" + path
    headers = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": token or os.environ["SLURMRESTD_TOKEN"]}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def save(name: str, text: str) -> None:
    (HERE / name).write_text(text.replace(os.environ["SLURMRESTD_TOKEN"], FAKE_TOKEN))
    print("wrote", name)


def sbatch(*options: str, command: str) -> str:
    out = sh("sbatch", "--parsable", f"--chdir={WORK}", f"--output={WORK}/%j.out", *options, "--wrap", command)
    return out.stdout.strip()


def wait_state(job_id: str, *states: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = json.loads(sh("squeue", "--json").stdout)["jobs"]
        if any(str(j["job_id"]) == job_id and j["job_state"] in states for j in jobs):
            return
        time.sleep(0.5)
    raise SystemExit(f"job {job_id} never reached {states}")


def main() -> None:
    WORK.mkdir(exist_ok=True)
    sh("scancel", "--user=root", check=False)
    done = sbatch("--job-name=gitopsd-rec-completed", "--comment=gitopsd-run=rec-completed", command="echo ok")
    failed = sbatch("--job-name=gitopsd-rec-failed", "--comment=gitopsd-run=rec-failed", command="exit 3")
    gpu = sbatch(
        "--job-name=gitopsd-rec-gpu", "--gpus=1", "--mem=256M", "-c", "2", command="echo $CUDA_VISIBLE_DEVICES"
    )
    timeout = sbatch("--job-name=gitopsd-rec-timeout", "--time=1", command="sleep 300")
    cancelled = sbatch("--job-name=gitopsd-rec-cancelled", command="sleep 300")
    wait_state(cancelled, "RUNNING")
    sh("scancel", cancelled)
    wait_state(failed, "FAILED")
    wait_state(done, "COMPLETED")
    wait_state(gpu, "COMPLETED")
    blocker = sbatch("--job-name=gitopsd-rec-running", "-c", "4", command="sleep 300")
    wait_state(blocker, "RUNNING")
    resources = sbatch("--job-name=gitopsd-rec-resources", "-c", "8", command="true")
    priority = sbatch("--job-name=gitopsd-rec-priority", "-c", "8", command="true")
    time.sleep(2)
    save("squeue_pending.json", sh("squeue", "--json").stdout)
    save("rest_jobs_pending.json", rest("GET", "/jobs")[1])
    sh("scancel", resources, priority)
    wait_state(timeout, "TIMEOUT")
    sh("scancel", blocker)
    wait_state(blocker, "CANCELLED")
    save("squeue.json", sh("squeue", "--json").stdout)
    save("rest_jobs.json", rest("GET", "/jobs")[1])
    ids = ",".join([done, failed, gpu, timeout, cancelled])
    save("sacct_jobcomp.txt", sh("sacct", "-c", "-X", "-P", "-j", ids, "-o", SACCT_FIELDS).stdout)
    save("sacct_disabled.txt", sh("sacct", "-X", "-P", "-j", ids, "-o", SACCT_FIELDS, check=False).stderr)
    save("sinfo.json", sh("sinfo", "--json").stdout)
    save("rest_nodes.json", rest("GET", "/nodes")[1])
    save("scontrol_ping_up.txt", sh("scontrol", "ping").stdout)
    script = "#!/bin/bash\ntrue\n"
    base = {"current_working_directory": str(WORK), "standard_output": "/dev/null", "environment": {"PATH": "/bin"}}
    _, body = rest("POST", "/job/submit", {"script": script, "job": {**base, "name": "gitopsd-rec-rest"}})
    save("rest_submit_ok.json", body)
    _, body = rest("POST", "/job/submit", {"script": script, "job": {**base, "gpus": "3"}})
    save("rest_submit_refused.json", body)
    save("sbatch_refused.txt", sh("sbatch", "--parsable", "--gpus=3", "--wrap", "true", check=False).stderr)
    save("rest_cancel_unknown.json", rest("DELETE", "/job/999999")[1])
    save("rest_jobs_bad_token.json", rest("GET", "/jobs", token=FAKE_TOKEN)[1])
    # The controller down for a moment: what the CLIs and slurmrestd answer then.
    pid = Path(os.environ["GITOPSD_SLURM_DIR"], "run", "slurmctld.pid").read_text().strip()
    sh("kill", pid)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    save("squeue_ctld_down.json", sh("squeue", "--json", check=False).stdout)
    save("sbatch_ctld_down.txt", sh("sbatch", "--parsable", "--wrap", "true", check=False).stderr)
    save("scontrol_ping_down.txt", sh("scontrol", "ping", check=False).stdout)
    save("rest_jobs_ctld_down.json", rest("GET", "/jobs")[1])
    sh(str(ROOT / "tools" / "slurm" / "up.sh"))


if __name__ == "__main__":
    main()
