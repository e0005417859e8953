#!/usr/bin/env bash
# The GPU rows of the benchmark table, in one go: a random-weight model with
# DeepSeek-R1-Distill-Qwen-1.5B's architecture (speed does not depend on the weight values;
# the real weights need the hub), bf16, on whatever CUDA device is visible.
#   OUT=results_dir bash benchmarks/gpu_run.sh [ARCH]
# Needs transformer_lens installed (pip install -e . does it). On an offline machine, put
# SmolLM2's tokenizer files in TOKENIZER_DIR (default: the offline zoo's).
set -uo pipefail
cd "$(dirname "$0")/.."
arch="${1:-r1-distill-qwen-1.5b}"
out="${OUT:-benchmarks/results}"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
tok=()
[ -n "${TOKENIZER_DIR:-}" ] && tok=(--tokenizer-from "$TOKENIZER_DIR")
"$py" benchmarks/make_random_model.py --arch "$arch" --out /tmp/bench-model "${tok[@]}" || exit 1
m=(--model /tmp/bench-model --dtype bfloat16 --device cuda)
t0=$SECONDS
# correctness in fp32 first (bf16 with random weights is too noisy to compare scores)
timeout "${T_CHECK:-90}" "$py" benchmarks/bench_trajectory.py --model /tmp/bench-model --dtype float32 --device cuda \
    --seqs 512 --batches 1 --repeats 1 --no-memory --variants cliff,hf_forward,hf_hidden,cliff_unfused \
    --out "$out/bench_trajectory_gpu_fp32_check.json"
echo "fp32 check: $((SECONDS - t0)) s"; t0=$SECONDS
timeout "${T_TRAJ:-240}" "$py" benchmarks/bench_trajectory.py "${m[@]}" --seqs 512,2048,4096 --batches 1,4 \
    --repeats 3 --out "$out/bench_trajectory_gpu.json"
echo "trajectory: $((SECONDS - t0)) s"; t0=$SECONDS
timeout "${T_HEADS:-90}" "$py" benchmarks/bench_heads.py "${m[@]}" --batch 8 --seq 512 --repeats 5 \
    --out "$out/bench_heads_gpu.json"
echo "heads: $((SECONDS - t0)) s"; t0=$SECONDS
timeout "${T_GEN:-150}" "$py" benchmarks/bench_generation.py "${m[@]}" --batches 1,8 --new-tokens 32 \
    --repeats 2 --out "$out/bench_generation_gpu.json"
echo "generation: $((SECONDS - t0)) s"
