#!/usr/bin/env bash
# One self-contained GPU check of the MoE kernels (issue 17's acceptance figures), about 8 minutes at most
# on an H100/H200. Each step has its own time limit and the next one runs whatever happened before.
#
#   1. python -m plm_kernels.gpu_acceptance: BERT-large 1024x4096, bf16, 25% of experts, uniform routing,
#      T = 16k and 64k, m = 32/128/256: MoE FFN vs cuBLAS dense (eager and CUDA graph), align µs at
#      T = 16k (device vs torch), PASS/FAIL against the targets; the tuned configs are written to
#      $OUT/tuned/<device>.json                                                      (<= 180 s)
#   2. compiled correctness: the device align against the torch align, every candidate config (Hopper ones
#      too) in bf16, the CUDA-graph path against eager                              (pytest, <= 150 s)
#   3. scattermoe side by side (the project's shared script tools/gpu_moe_side_by_side.py), T = 16k, when
#      the script and scattermoe's source were put in .device/ (see "prepare")        (<= 60 s)
#   4. python -m runner.bench moe-gpu: whole MiniLM and BERT-large, 32x128 and 256x128, 25% of experts,
#      dense vs MoE, eager and CUDA graphs                                           (<= 90 s)
#
# On this (CPU) machine, once, before the device run:   bash plm_kernels/device_check.sh prepare
#   copies the shared scripts (../shared/tools, or $SHARED_TOOLS) and scattermoe's source (from the fetched
#   mirror of github shawntan/scattermoe, ../.mirror/shawntan+scattermoe/repo, or $SCATTERMOE_MIRROR) into
#   .device/, an untracked folder that travels with the working tree (delete it afterwards; never commit it).
#   Run it from the repository root. Without it step 3 is skipped.
# On the device machine, from the repository root:      bash plm_kernels/device_check.sh
#   results under $OUT (or outputs/device_check): 1_acceptance.log gpu_acceptance.json 2_tests.log
#   3_scattermoe.log side_by_side.json 4_model.log moe_gpu.json tuned/*.json (8 files: the device tool's limit).
set -u

if [ "${1:-}" = "prepare" ]; then
    mkdir -p .device/tools
    # paths relative to the repository root: the shared folder and the fetched mirrors sit beside the checkout
    tools=${SHARED_TOOLS:-../shared/tools}
    if [ -f "$tools/gpu_moe_side_by_side.py" ]; then
        # the shared scripts import plm_kernels themselves: copied as they are
        cp "$tools/gpu_moe_side_by_side.py" "$tools/gpu_moe_align_probe.py" .device/tools/ && echo "tools from $tools"
    else
        echo "no shared tools at $tools (set SHARED_TOOLS): step 3 will be skipped"
    fi
    mirror=${SCATTERMOE_MIRROR:-../.mirror/shawntan+scattermoe/repo}
    if [ -d "$mirror" ]; then
        git --git-dir="$mirror" archive HEAD scattermoe | tar -x -C .device && echo "scattermoe -> .device/scattermoe"
    else
        echo "no scattermoe mirror at $mirror (fetch github:shawntan/scattermoe first, or set SCATTERMOE_MIRROR): step 3 will be skipped"
    fi
    exit 0
fi

unset TRITON_INTERPRET
OUT=${OUT:-outputs/device_check}
mkdir -p "$OUT/tuned"
export OUT PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PLM_KERNELS_CACHE_DIR="$OUT/tuned"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline
PY=${PYTHON:-python3}

{ nvidia-smi -L 2>&1 | head -2
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} >"$OUT/1_acceptance.log" 2>&1
timeout 180 $PY -m plm_kernels.gpu_acceptance --shapes bert-large --tokens 16384,65536 --expert-sizes 32,128,256 \
    >>"$OUT/1_acceptance.log" 2>&1
echo "acceptance exit $?"; cat "$OUT/1_acceptance.log"

{
    if $PY -c "import pytest" 2>/dev/null; then
        timeout 150 $PY -m pytest -q -p no:cacheprovider \
            tests/kernels/test_kernels_triton_align.py tests/kernels/test_kernels_gpu.py tests/test_moe_cuda_graph.py \
            -k "align or bfloat16 or graph or bucket or pad or cut"
        echo "pytest exit $?"
    else
        echo "pytest is not installed: step 2 skipped"
    fi
} >"$OUT/2_tests.log" 2>&1
tail -3 "$OUT/2_tests.log"

if [ -f .device/tools/gpu_moe_side_by_side.py ] && [ -d .device/scattermoe ]; then
    (SBS_TOKENS=16384 PYTHONPATH=".device:.:${PYTHONPATH:-}" \
        timeout 60 $PY .device/tools/gpu_moe_side_by_side.py) >"$OUT/3_scattermoe.log" 2>&1
    echo "scattermoe exit $?"; cat "$OUT/3_scattermoe.log"
else
    echo "step 3 skipped: run 'bash plm_kernels/device_check.sh prepare' on the CPU machine first" | tee "$OUT/3_scattermoe.log"
fi

timeout 90 $PY -m runner.bench moe-gpu --models minilm,bert-large --shapes 32x128,256x128 --sizes 32,128 \
    --ratios 0.25 --repeats 5 --out "$OUT" >"$OUT/4_model.log" 2>&1
echo "whole model exit $?"; cat "$OUT/4_model.log"
