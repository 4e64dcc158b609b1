#!/usr/bin/env bash
# One GPU session's measurements, as recorded in docs/BENCHMARKS.md ("Training throughput: GPU").
# Usage: bash bench/gpu_session.sh OUTDIR [CORPUS_MB] [WARM_BUDGET]   (env: BUDGET, ATTENTION_BUDGET, BENCH_ARGS)
# Needs: the project's Python dependencies of prepare.py and train.py (torch with CUDA, rustbpe,
# tiktoken, pyarrow, numpy, requests, psutil). With no network, the corpus is the interpreter's own
# installed Python sources (CORPUS_MB of them, default 100), prepared with `prepare.py --source`.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_session.sh OUTDIR [CORPUS_MB] [WARM_BUDGET]}
MB=${2:-100}
WARM=${3:-60}
BUDGET=${BUDGET:-300}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import os, torch, prepare, train; ok = torch.cuda.is_available(); print('torch', torch.__version__, torch.cuda.get_device_name() if ok else 'no CUDA'); assert ok or os.environ.get('REQUIRE_CUDA') == '0', 'no CUDA device: set REQUIRE_CUDA=0 to run on CPU'" || exit 1
CORPUS=$(mktemp -d)
$PY - "$CORPUS" "$MB" <<'PYEOF'
import os, shutil, sys, sysconfig
dest, limit = sys.argv[1], int(sys.argv[2]) * 2**20
root, total = sysconfig.get_paths()["purelib"], 0
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(f for f in filenames if f.endswith(".py")):
        src = os.path.join(dirpath, name)
        size = os.path.getsize(src)
        if size > 500_000:
            continue
        target = os.path.join(dest, os.path.relpath(src, root))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(src, target)
        total += size
        if total >= limit:
            print(f"corpus: {total / 2**20:.0f} MiB of .py from {root}")
            sys.exit(0)
print(f"corpus: {total / 2**20:.0f} MiB of .py from {root} (all there is)")
PYEOF
T0=$(date +%s)
$PY prepare.py --source "$CORPUS" 2>&1 | tee "$OUT/prepare.log" || exit 1
echo "prepare: $(( $(date +%s) - T0 )) s" | tee -a "$OUT/prepare.log"
$PY bench/train_throughput.py --runs 2 --budget "$BUDGET" --warm-budget "$WARM" --work-root /tmp/arf-bench \
    --json "$OUT/train.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
cp /tmp/arf-bench/bench/logs/*.log "$OUT/" 2>/dev/null || true
# The attention paths without FlashAttention-3, on the same data and budget, in this one invocation:
# masked SDPA (what auto runs offline) against FlexAttention. ATTENTION_BUDGET=0 skips it.
ATT_BUDGET=${ATTENTION_BUDGET:-60}
if [ "$ATT_BUDGET" != "0" ]; then
    for ATT in sdpa flex; do
        AUTORESEARCH_ATTENTION=$ATT AUTORESEARCH_TIME_BUDGET=$ATT_BUDGET $PY train.py > "$OUT/attention-$ATT.log" 2>&1
        echo "== attention $ATT (exit $?, ${ATT_BUDGET} s):" | tee -a "$OUT/attention.txt"
        grep -E "^(attention|val_bpb|training_seconds|peak_vram_mb|mfu_percent|total_tokens_M|num_steps):" \
            "$OUT/attention-$ATT.log" | tee -a "$OUT/attention.txt"
    done
fi
