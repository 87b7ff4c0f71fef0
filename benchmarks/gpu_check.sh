#!/usr/bin/env bash
# The real-scale path on one CUDA GPU, in under 8 minutes: installs what it needs, then runs
# benchmarks/gpu_check.py (QLoRA SFT of a Qwen3-4B-shaped model: tokens/s, peak memory and the memory model's
# estimate; SLERP of two 4B-shaped checkpoints on the GPU vs the CPU; vLLM serving the merge through our client)
# and writes benchmarks/results-gpu.json.
#
#   bash benchmarks/gpu_check.sh                 # a Linux x86_64 box with an NVIDIA GPU and PyPI access
#   bash benchmarks/gpu_check.sh --cpu-smoke     # no GPU: the same script on tiny shapes, nothing installed,
#                                                # results to $TMPDIR/results-gpu-smoke.json
#   SKIP_INSTALL=1 PYTHON=/venv/bin/python VLLM_PYTHON=/vllm-venv/bin/python bash benchmarks/gpu_check.sh
#
# Installs into two environments under .gpu-check/ (in parallel, to save minutes):
#   train: `pip install torch==2.13.0` (from PyPI on Linux x86_64 this is the CUDA build) and `-e .[gpu]`
#          (bitsandbytes for QLoRA);
#   vllm:  `pip install vllm`, which pins its own torch and transformers builds: kept apart so neither
#          environment's pins break the other. branchmerge starts it as a managed process
#          (teachers/engines.py, VllmOptions.command = that environment's python).
# Extra arguments go to gpu_check.py (e.g. --steps 4 --requests 128, --keep to keep the checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
LIMIT_S=${LIMIT_S:-470}   # the whole check, installs included, stays under 8 minutes
OUT=${OUT:-benchmarks/results-gpu.json}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--cpu-smoke" ]]; then
    shift
    exec "${PYTHON:-python3}" benchmarks/gpu_check.py --cpu-smoke --out "${SMOKE_OUT:-${TMPDIR:-/tmp}/results-gpu-smoke.json}" "$@"
fi

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi finds none); run with --cpu-smoke to check the script" >&2
    exit 2
fi
nvidia-smi -L

if [[ -z "${SKIP_INSTALL:-}" ]]; then
    mkdir -p .gpu-check
    (
        python3 -m venv .gpu-check/train
        .gpu-check/train/bin/pip install -q torch==2.13.0
        .gpu-check/train/bin/pip install -q -e ".[gpu]"
    ) >.gpu-check/train-install.log 2>&1 &
    train_pid=$!
    (
        python3 -m venv .gpu-check/vllm
        .gpu-check/vllm/bin/pip install -q vllm
    ) >.gpu-check/vllm-install.log 2>&1 &
    vllm_pid=$!
    wait "$train_pid" || { tail -20 .gpu-check/train-install.log; echo "gpu_check: install failed" >&2; exit 1; }
    wait "$vllm_pid" || { tail -20 .gpu-check/vllm-install.log; echo "gpu_check: vLLM install failed" >&2; exit 1; }
    PYTHON=.gpu-check/train/bin/python
    VLLM_PYTHON=.gpu-check/vllm/bin/python
    echo "gpu_check: installed in $((SECONDS - start)) s"
fi
PYTHON=${PYTHON:-python3}
VLLM_PYTHON=${VLLM_PYTHON:-$PYTHON}

"$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU seen:', ok); sys.exit(0 if ok else 1)" \
    || { echo "gpu_check: this torch build does not see the GPU (a CPU build? see README's set-up)" >&2; exit 1; }
"$VLLM_PYTHON" -c "import vllm; print('vllm', vllm.__version__)" \
    || { echo "gpu_check: no vLLM in $VLLM_PYTHON; the vllm section will fail" >&2; }

left=$((LIMIT_S - (SECONDS - start)))
echo "gpu_check: measuring, ${left} s left"
timeout --signal=TERM --kill-after=20 "$left" \
    "$PYTHON" benchmarks/gpu_check.py --out "$OUT" --vllm-python "$VLLM_PYTHON" "$@"
echo "gpu_check: done in $((SECONDS - start)) s -> $OUT"
