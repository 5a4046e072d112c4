"""Per-step time and peak memory of SASRec's training step, full vs sampled softmax,
as the catalogue grows.

    python scripts/bench_softmax.py --items 10000,100000,1000000 --losses full,sampled \
        [--batch 64 --length 50 --steps 5] [--out reports/bench_softmax.json]

Each (items, loss) runs in a fresh process (so ru_maxrss is its own): a SASRec with the
stage's defaults (hidden 64, 2 layers) over `items` items, `steps` training steps
(forward, backward, AdamW) on full batches of random windows (batch x length targets,
no padding: the heaviest batch the loop builds). Reports the mean step time after a
warm-up step, the peak RSS, and the peak's growth over the process once the model was
built: the step's activations, the gradients and AdamW's moments (`table_states_mib` is
the item table's share of those, which grows with N whatever the loss). A full-softmax
configuration whose logits alone would exceed --max-logits-gib is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(items: int, loss: str, batch: int, length: int, steps: int) -> dict:
    import numpy as np
    import torch

    from models.sasrec import SASRec, SASRecConfig
    from training.stages.sasrec import SASRecTrainConfig, _SASRecStep

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=items, max_len=max(length, 100)))
    counts = np.random.default_rng(0).zipf(1.5, items + 1).clip(max=10**6)
    step = _SASRecStep(model, SASRecTrainConfig(loss=loss).sampled_softmax(counts, "cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seq = torch.randint(1, items + 1, (batch, length))
    targets = torch.randint(1, items + 1, (batch, length))
    times = []
    base = _peak_rss_mib()
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss_value = step(seq, targets) / (batch * length)
        optimizer.zero_grad(set_to_none=True)
        loss_value.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = _peak_rss_mib()
    return {
        "items": items,
        "loss": loss,
        "targets_per_step": batch * length,
        "step_seconds": sum(times[1:]) / steps,
        "peak_rss_mib": round(peak, 1),
        "step_peak_growth_mib": round(peak - base, 1),
        # the item table's weights, gradient and AdamW's two moments: grow with N anyway
        "table_states_mib": round(4 * (items + 1) * model.config.hidden * 4 / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--losses", default="full,sampled")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-logits-gib", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=2, metavar=("ITEMS", "LOSS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(int(args.one[0]), args.one[1], args.batch, args.length, args.steps)
        print(json.dumps(result))
        return
    rows = []
    for items in (int(v) for v in args.items.split(",")):
        for loss in args.losses.split(","):
            logits_gib = args.batch * args.length * (items + 1) * 4 / 2**30
            if loss == "full" and logits_gib > args.max_logits_gib:
                rows.append({"items": items, "loss": loss, "skipped": f"{logits_gib:.1f} GiB"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            command = [sys.executable, __file__, "--one", str(items), loss]
            command += ["--batch", str(args.batch), "--length", str(args.length)]
            command += ["--steps", str(args.steps)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        machine = {"python": platform.python_version(), "cpus": os.cpu_count()}
        args.out.write_text(
            json.dumps(
                {"args": vars(args) | {"out": str(args.out)}, "machine": machine, "rows": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
