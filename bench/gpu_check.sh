#!/usr/bin/env bash
# The first command of a session with a GPU (an H100, ~8 minutes). Prepare here first:
#     bash bench/gpu_wheels.sh            # .whl/: the packages the GPU machine lacks
# then run it there with `.whl` in `carry`:
#     bash bench/gpu_check.sh             # results in $OUT (copy them into bench/results/)
# It installs the carried packages beside the machine's own torch, records every version, and runs
# bench/gpu_check.py (the real trainer; see its docstring for the five cases). If ColossalAI 0.5.0
# cannot run on that torch, it says so and measures the closest honest equivalent, labelled.
# CPU plumbing check (no GPU, tiny random models): bash bench/gpu_check.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-bench/out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
mkdir -p "$RESULTS" "$WORK"
PY=${PYTHON:-python3}
NOTES=()
DRY=0; [[ " $* " == *" --dry-run "* ]] && DRY=1   # CPU plumbing check with this machine's own packages
if [ $DRY = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && tar -xzf .whl/site-extra.tar.gz -C /tmp/site || { echo "gpu_check: installing .whl failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
imports() { $PY - <<'PY' 2>&1 | tail -1
import warnings; warnings.simplefilter("ignore")
from colossalai.booster import Booster
from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin
from colossalai.nn.optimizer import HybridAdam
print("ok")
PY
}
if [ $DRY = 0 ] && ! $PY -c "import bitsandbytes" >/dev/null 2>&1; then
    # colossalai.nn.optimizer imports GaLore (galore_torch), which imports bitsandbytes at import
    # time; HybridAdam does not use it. A stub keeps that import working (GaLore stays unusable).
    mkdir -p /tmp/stub/bitsandbytes/optim
    echo '"""STUB (bench/gpu_check.sh): not bitsandbytes."""' > /tmp/stub/bitsandbytes/__init__.py
    : > /tmp/stub/bitsandbytes/optim/__init__.py
    echo 'class Optimizer2State:  # stub: GaLore 8-bit is not usable
    pass' > /tmp/stub/bitsandbytes/optim/optimizer.py
    export PYTHONPATH=$PYTHONPATH:/tmp/stub
    NOTES+=("bitsandbytes absent: a stub satisfies galore_torch's import (GaLore unusable, not used)")
fi
STATUS=$(imports)
if [ $DRY = 0 ] && [ "$STATUS" != "ok" ] && [ -d .whl/peft ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/peft .whl/peft/*.whl
    export PYTHONPATH=/tmp/peft:$PYTHONPATH
    NOTES+=("colossalai did not import with this machine's peft ($STATUS): carried peft 0.13.2 used")
    STATUS=$(imports)
fi
VERSIONS=$($PY - <<'PY' 2>/dev/null
import importlib.metadata as md, platform
names = ["torch", "colossalai", "transformers", "diffusers", "peft", "huggingface-hub", "av", "triton"]
def v(n):
    try: return md.version(n)
    except Exception: return "absent"
print(f"python {platform.python_version()}; " + "; ".join(f"{n} {v(n)}" for n in names))
PY
)
{ echo "versions: $VERSIONS"; for n in "${NOTES[@]}"; do echo "note: $n"; done; } | tee "$RESULTS/gpu_check_env.txt"
if [ "$STATUS" = "ok" ] || [ $DRY = 1 ]; then
    PYTHONUNBUFFERED=1 $PY bench/gpu_check.py --out "$WORK" "$@" 2>&1 | tee "$RESULTS/gpu_check.log"
    cp "$WORK"/gpu_check.txt "$WORK"/gpu_check.json "$RESULTS"/ 2>/dev/null
    for log in "$WORK"/*.log; do echo "== $log"; tail -n 30 "$log"; done > "$RESULTS/gpu_check_runs.txt" 2>/dev/null
else
    # the closest honest equivalent: no ColossalAI at all, so no ZeRO-2 and no HybridAdam
    echo "gpu_check: colossalai 0.5.0 does not run on this torch ($STATUS)." | tee "$RESULTS/gpu_check.txt"
    echo "FALLBACK, labelled: bench/gpu_stdit_xl.py = the bare STDiT-XL/2 step (fp32 weights + bf16 autocast," \
         "torch AdamW, random latents, no VAE/T5, no ZeRO) — NOT the trainer's step" | tee -a "$RESULTS/gpu_check.txt"
    PYTHONUNBUFFERED=1 $PY bench/gpu_stdit_xl.py 2>&1 | tee -a "$RESULTS/gpu_check.txt"
fi
cat /proc/loadavg > "$RESULTS/gpu_check_loadavg.txt"
