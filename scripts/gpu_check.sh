#!/usr/bin/env bash
# The CUDA path end to end on a GPU host, in one run (about 15 minutes on one H200):
#   1. `train pipeline` on MovieLens-100K with --device cuda (bf16 autocast), timed;
#   2. the trained bundle served on CUDA through the real app (ASGI): /readyz, /recommend
#      latency, POST /items (cold start on CUDA; a hash stand-in for MiniLM's vectors);
#   3. scripts/bench_service.py at 10k and 1M items on CUDA (beam + dense head, w = 0.5);
#   4. `benchmark` sasrec vs flexcode on CUDA, 2 seeds (quality under bf16, against the
#      CPU figures in BENCHMARKS.md).
# Every step has its own time limit, so one slow step cannot take the others with it.
#
#   bash scripts/gpu_check.sh OUT_DIR        # needs the package installed, and a GPU
# Steps write OUT_DIR/{pipeline.log,serve.json,bench_service_*.json,results.md,results.json}.
set -u
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
RUN=runs/gpu-check
BUNDLES=bundles-gpu-check
rm -rf "$RUN" "$BUNDLES"

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, report its status and time
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "== step $name: rc=$? in $((SECONDS - start)) s (limit $limit s)"
}

nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

step pipeline 480 $PY -m training.cli train pipeline -d ml-100k --device cuda \
  --run-dir "$RUN" --bundle-root "$BUNDLES" 2>&1 | tee "$OUT/pipeline.log" | grep -v -E "it/s|s/it"

step serve 60 $PY - "$BUNDLES" "$OUT/serve.json" <<'EOF'
"""The trained bundle on CUDA through the real app: latency and a cold-start item."""
import asyncio, json, statistics, sys, tempfile, time

import os

import httpx

from models.bundle import load_bundle
from scripts.make_large_bundle import HashTextEncoder
from service.app import create_app
from service.settings import Settings

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")


async def main(bundle_root: str, out: str) -> None:
    bundle = load_bundle(bundle_root, "cpu")
    wanted = bundle.manifest.config.get("text_model_id")
    encoder = HashTextEncoder(dim=bundle.tokenizer.config.sem.input_dim, model_id=wanted)
    report = {}
    for backend in ("torch", "onnx"):
        settings = Settings(bundle_path=bundle_root, device=DEVICE, backend=backend,
                            journal_path=f"{tempfile.mkdtemp()}/j.db", log_level="warning")
        app = create_app(settings, text_encoder=encoder)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                ready = (await c.get("/readyz")).json()
                item = {"items": [{"item_id": "gpu-check-new", "title": "A new film",
                                   "categories": "Comedy"}]}
                added = await c.post("/items", json=item)
                times, answers = [], None
                for i in range(220):
                    body = {"history": ["50", "172", "181", str(1 + i % 400)], "k": 10}
                    t0 = time.perf_counter()
                    r = await c.post("/recommend", json=body)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                    answers = r.json()
                times = sorted(times[20:])
                report[backend] = {
                    "ready": ready, "post_items_status": added.status_code,
                    "post_items": added.json(), "recommend_p50_ms": 1e3 * statistics.median(times),
                    "recommend_p99_ms": 1e3 * times[int(0.99 * len(times)) - 1],
                    "last_answer": answers,
                }
                print(backend, json.dumps({k: v for k, v in report[backend].items()
                                            if k.endswith("_ms") or k == "post_items_status"}))
    with open(out, "w") as f:
        json.dump(report, f, indent=2)


asyncio.run(main(*sys.argv[1:3]))
EOF

for size in 10000 1000000; do
  step "bench_service_$size" $((size > 10000 ? 300 : 90)) $PY scripts/bench_service.py --sizes $size \
    --backends torch --device cuda --dense-weight 0.5 --requests 100 --concurrent-requests 320 \
    --item-requests 10 --out "$OUT/bench_service_$size.json" 2>&1 | tail -30
done
step benchmark 300 $PY -m training.cli benchmark -d ml-100k --device cuda --models sasrec,flexcode \
  --seeds 2 --workers 2 --run-dir "$RUN" --out "$RUN/bench" 2>&1 | grep -v -E "it/s|s/it" | tail -40

cp "$RUN/bench/results.md" "$RUN/bench/results.json" "$OUT/" 2>/dev/null
