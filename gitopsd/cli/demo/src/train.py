"""Train a logistic-regression classifier on data/blobs.csv with plain Python (no downloads, no numpy).

gitopsd runs this with GITOPSD_OUTPUT_DIR and GITOPSD_METRICS_FILE set: it appends one JSON line of metrics
per epoch and writes the model as JSON after every epoch, so an early stop still leaves an artifact.
"""

import argparse
import csv
import json
import math
import os
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--data", default="../data/blobs.csv")
    args = parser.parse_args()

    out = Path(os.environ.get("GITOPSD_OUTPUT_DIR", "out"))
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = Path(os.environ.get("GITOPSD_METRICS_FILE", out / "metrics.jsonl"))
    random.seed(int(os.environ.get("SEED", "0")))

    with open(args.data, newline="") as handle:
        rows = [(float(r["x1"]), float(r["x2"]), int(r["label"])) for r in csv.DictReader(handle)]
    random.shuffle(rows)
    w1, w2, b = 0.0, 0.0, 0.0
    for epoch in range(1, args.epochs + 1):
        loss = correct = 0.0
        for x1, x2, y in rows:
            p = 1.0 / (1.0 + math.exp(-(w1 * x1 + w2 * x2 + b)))
            loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
            correct += (p >= 0.5) == (y == 1)
            grad = p - y
            w1 -= args.lr * grad * x1 / len(rows)
            w2 -= args.lr * grad * x2 / len(rows)
            b -= args.lr * grad / len(rows)
        metrics = {"epoch": epoch, "loss": loss / len(rows), "accuracy": correct / len(rows)}
        with metrics_file.open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        (out / "model.json").write_text(json.dumps({"w": [w1, w2], "b": b, "epoch": epoch}))
        print(f"epoch {epoch}: loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
