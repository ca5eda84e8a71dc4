#!/usr/bin/env bash
# The SmolLM2 study on one GPU box, after setup.sh: trains adapters, sweeps and searches them, runs the arena and
# the benchmarks. Started detached (setsid) so it outlives a single device call; each chain logs to ~/rw/out/logs.
#   setsid nohup bash bench/gpu/driver.sh > ~/rw/out/driver.log 2>&1 &
# PLAN=study (default) runs session 2's study; PLAN=followup the session-3 follow-up (see plan_followup).
# Chains run side by side (a 135M model leaves the H200 mostly idle), so seconds per step and per point below are
# measured under that sharing; bench/README.md says which numbers ran alone.
set -uo pipefail
cd "$HOME/rw/repo"
source bench/gpu/env.sh
O=$R/out; mkdir -p "$O/logs" "$O/runs" "$O/sw"
DEADLINE=$(( $(date +%s) + ${STUDY_SECONDS:-900} ))  # chains still running then are stopped; results stay valid
# Knobs (defaults: the recorded study; a CPU smoke test shrinks them and points BASE at a tiny model).
LIMIT=${LIMIT:-32} STEPS=${STEPS:-500} GRPO_STEPS=${GRPO_STEPS:-150} LAYER_GROUPS=${LAYER_GROUPS:-4} BUDGET=${BUDGET:-8}
BASE=${BASE:-smollm2} EXTRA_DELAY=${EXTRA_DELAY:-150}
SFT="base=$BASE preset=smollm2 dtype=fp32 trainer.bf16=${BF16:-true} data.size=${DATA_SIZE:-2000} trainer.max_steps=$STEPS
     trainer.per_device_train_batch_size=${BATCH:-32}"
EVAL="--base $BASE --limit $LIMIT --batch-size ${EVAL_BATCH:-64}"
stamp() { echo "[$(date +%T)] $*"; }

train() {  # NAME RECIPE OVERRIDES...
  local name=$1; shift
  stamp "train $name"; rewind train "$@" --out "$O/runs/$name" > "$O/logs/train-$name.log" 2>&1
  stamp "trained $name rc=$?"
}

sharded() {  # PORT REWIND-ARGS...: two ranks share one GPU's points (the torchrun code path, ranks on cuda:0)
  local port=$1; shift
  for rank in 1 0; do
    RANK=$rank WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port rewind "$@" &
  done
  wait
}

chain_lora() {
  train lora sft/lora $SFT trainer.learning_rate=1e-3 save_steps=$(( STEPS / 4 ))
  sharded 29511 search --adapter "$O/runs/lora" --checkpoints "$O/runs/lora/checkpoint-*" $EVAL \
      --groups "$LAYER_GROUPS" --budget "$BUDGET" --out "$O/sw/lora" > "$O/logs/sw-lora.log" 2>&1
  stamp "swept+searched lora rc=$?"
}

chain_oft() {
  train oft sft/oft $SFT trainer.learning_rate=1e-3 save_steps=$STEPS
  sharded 29512 search --adapter "$O/runs/oft" --path cayley --path dense $EVAL \
      --groups "$LAYER_GROUPS" --budget "$BUDGET" --out "$O/sw/oft" > "$O/logs/sw-oft.log" 2>&1
  stamp "swept+searched oft rc=$?"
}

chain_full() {
  train full sft/full $SFT trainer.learning_rate=5e-5 save_steps=$STEPS
  sharded 29513 sweep --adapter "$O/runs/full" $EVAL --out "$O/sw/full" > "$O/logs/sw-full.log" 2>&1
  stamp "swept full rc=$?"
}

chain_grpo() {
  train grpo grpo/lora base="$BASE" preset=smollm2 dtype=fp32 trainer.bf16="${BF16:-true}" data.size=${DATA_SIZE:-2000} \
      trainer.max_steps="$GRPO_STEPS" trainer.per_device_train_batch_size=64 trainer.num_generations=8 trainer.max_completion_length=48 \
      trainer.learning_rate=1e-4 save_steps=$(( GRPO_STEPS / 3 ))
  rewind sweep --adapter "$O/runs/grpo" --alphas 0,0.25,0.5,0.75,1 $EVAL --out "$O/sw/grpo" \
      > "$O/logs/sw-grpo.log" 2>&1
  stamp "swept grpo rc=$?"
  # P2: the old way (merged checkpoint + lm_eval CLI per point) on two of this sweep's points
  python3 bench/sweep_vs_cli.py --sweep "$O/sw/grpo" --points base@0,final@1 --device "${DEVICE:-cuda}" \
      --out "$O/p2_sweep_vs_cli.jsonl" > "$O/logs/p2.log" 2>&1
  stamp "p2 rc=$?"
}

chain_extra() {  # NAME LR: more methods for the arena's correlations; final point only
  train "$1" "sft/$1" $SFT trainer.learning_rate="$2" save_steps=$STEPS
  rewind sweep --adapter "$O/runs/$1" --alphas 0,1 $EVAL --out "$O/sw/$1" > "$O/logs/sw-$1.log" 2>&1
  stamp "swept $1 rc=$?"
}

chain_p3() {  # P3: export's peak host RSS and wall time on random-weight shapes, 7B first (host-side work)
  [ "$BASE" = smollm2 ] || return 0
  for shape in qwen llama1b smollm2; do
    OMP_NUM_THREADS=8 python3 bench/export_rss.py --shape $shape --methods lora16,oft --devices cpu,cuda \
        --work "$R/p3work-$shape" --out "$O/p3_export_rss.jsonl" >> "$O/logs/p3.log" 2>&1
    stamp "p3 $shape rc=$?"; rm -rf "$R/p3work-$shape"
  done
}

plan_study() {  # the session-2 study: every chain side by side, then the arena and P1 on a quiet GPU
  stamp "start (deadline in $(( DEADLINE - $(date +%s) )) s)"
  pids=()
  chain_p3 & pids+=($!)
  chain_lora & pids+=($!)
  chain_oft & pids+=($!)
  chain_full & pids+=($!)
  chain_grpo & pids+=($!)
  sleep "$EXTRA_DELAY"  # extras start once the main trainings are under way
  for spec in dora:1e-3 pissa:1e-3 ia3:5e-3 vera:5e-3; do
    chain_extra "${spec%%:*}" "${spec##*:}" & pids+=($!)
  done

  while [ "$(date +%s)" -lt "$DEADLINE" ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 10; done
  if pgrep -f "rewind.cli" > /dev/null; then
    stamp "deadline: stopping $(pgrep -fc 'rewind.cli') unfinished rewind processes"
    pkill -f "rewind.cli"; pkill -f sweep_vs_cli; sleep 3
  fi

  # The arena over every adapter whose sweep finished.
  adapters=(); sweeps=()
  for d in "$O"/sw/*/; do
    name=$(basename "$d")
    [ -f "$d/summary.json" ] && [ -d "$O/runs/$name" ] && { adapters+=("$O/runs/$name"); sweeps+=(--sweep "$d"); }
  done
  stamp "arena over ${#adapters[@]} adapters"
  timeout 180 python3 -m rewind.cli arena "${adapters[@]}" "${sweeps[@]}" --base "$BASE" --limit 32 --out "$O/arena" \
      > "$O/logs/arena.log" 2>&1
  stamp "arena rc=$?"

  # P1 on a quiet GPU: the alpha-switch scaling grid and the kernel probe.
  if [ "$BASE" = smollm2 ]; then
    timeout 90 python3 bench/switch_probe.py --device cuda --compile-cap 20 --out "$O/switch_probe_h200.jsonl" \
        --child-log "$O/logs/compile_child.log" > "$O/logs/probe.log" 2>&1
    stamp "probe rc=$?"
    timeout 180 python3 bench/alpha_switch.py --shape smollm2,llama1b,qwen --targets all-linear --targets q_proj,v_proj \
        --methods lora16,oft --reps 5 --reload-reps 0 --device cuda --out "$O/p1_grid.jsonl" > "$O/logs/p1.log" 2>&1
    stamp "p1 rc=$?"
  fi
}

plan_followup() {  # Full FT's sweep and diagnostics, P2 on a quiet GPU, the fused kernels' tests and P1
  local pids=()
  (timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_fused.py tests/test_paths.py \
      > "$O/logs/pytest_cuda.log" 2>&1; stamp "pytest (cuda) rc=$?") & pids+=($!)
  chain_full & pids+=($!)
  (train lora sft/lora $SFT trainer.learning_rate=1e-3 save_steps=$STEPS
   rewind sweep --adapter "$O/runs/lora" --alphas 0,1 $EVAL --out "$O/sw/lora" > "$O/logs/sw-lora.log" 2>&1
   stamp "swept lora rc=$?") & pids+=($!)
  wait "${pids[@]}"
  # Full FT's arena row (joined with the earlier arena by `rewind arena --include`) and its per-adapter plots
  (timeout 300 python3 -m rewind.cli arena "$O/runs/full" --sweep "$O/sw/full" --base "$BASE" --limit 32 \
      --out "$O/arena-full" > "$O/logs/arena.log" 2>&1; stamp "arena (full) rc=$?") &
  (D=$O/diagnostics/full
   timeout 300 python3 -m rewind.cli diagnose spectral --base "$BASE" --adapter "$O/runs/full" --out "$D" \
       > "$O/logs/diag-spectral.log" 2>&1; stamp "spectral (full) rc=$?"
   timeout 300 python3 -m rewind.cli diagnose activations --base "$BASE" --adapter "$O/runs/full" --limit 32 \
       --out "$D" > "$O/logs/diag-activations.log" 2>&1; stamp "activations (full) rc=$?") &
  wait
  # P2 alone on the GPU: rewind's points timed again in-process right before the old way
  timeout 420 python3 bench/sweep_vs_cli.py --sweep "$O/sw/lora" --points base@0,final@1 --remeasure \
      --device "${DEVICE:-cuda}" --out "$O/p2_quiet.jsonl" > "$O/logs/p2.log" 2>&1
  stamp "p2 rc=$?"
  # P1: the kernel probe (torch and Triton writes side by side) and the grid with the Triton writes, then 7B
  # again with them off (REWIND_TRITON=0) for the same-run comparison
  timeout 120 python3 bench/switch_probe.py --device cuda --compile-cap 0 --out "$O/switch_probe_h200.jsonl" \
      > "$O/logs/probe.log" 2>&1
  stamp "probe rc=$?"
  timeout 180 python3 bench/alpha_switch.py --shape smollm2,llama1b,qwen --targets all-linear \
      --targets q_proj,v_proj --methods lora16,oft --reps 5 --reload-reps 0 --device cuda --out "$O/p1_grid.jsonl" \
      > "$O/logs/p1.log" 2>&1
  stamp "p1 rc=$?"
  REWIND_TRITON=0 timeout 120 python3 bench/alpha_switch.py --shape qwen --methods lora16,oft --reps 5 \
      --reload-reps 0 --device cuda --out "$O/p1_grid.jsonl" > "$O/logs/p1-torch.log" 2>&1
  stamp "p1 (torch writes) rc=$?"
}

"plan_${PLAN:-study}"
stamp "done"
touch "$O/DONE"
