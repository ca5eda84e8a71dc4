#!/usr/bin/env bash
# On the GPU box, after setup.sh, one step per device call (each under 10 minutes); results under $OUT.
#   bash bench/gpu/issues.sh grid     # 16: grid vs point-by-point sweep, per-item agreement
#   bash bench/gpu/issues.sh gen      # 16: a 7B-shaped 11-point generation pass, grid vs merged point by point
#   bash bench/gpu/issues.sh conf     # 17: the demo OFT adapter at 256 target items (bench/math_tasks.py), intervals
#   bash bench/gpu/issues.sh race     # 17: a race at the conf sweep's item budget (10 points x 2036 items)
#   bash bench/gpu/issues.sh export   # 19: pipelined export on the 7B shape against the old way and a copy
#   bash bench/gpu/issues.sh onepoint # 16: one LoRA point through the branches at 64 rows on the 7B shape, profiled
#   bash bench/gpu/issues.sh cli      # 16: the old way (merge + lm_eval CLI) for two points of the sweep11 stage
#   setsid nohup bash bench/gpu/issues.sh study [oft] [lora] [race] [search] [agree] [agree-lora] [agree-stacked] [agree-lora-stacked] [sweep11] > ~/rw/out/study.log 2>&1 &
#       17, detached, from ~/rw/repo (mkdir -p ~/rw/out first): the 256-item sweeps of the OFT and LoRA adapters,
#       the race at the OFT sweep's item budget, the LoRA sweep's per-layer search; agree (16): grid vs point by
#       point per item, against the saved grid sweep docs/study/sweeps-256/oft; agree-lora, against .../lora;
#       agree-stacked: a stacked grid sweep of the agree stage's points against its saved run .../oft-point;
#       sweep11 (16): the OFT adapter, 11 alphas on both paths, the study's suites, grid then point by point
#       (LIMIT11, BATCH11: items per task and per batch; 2026-12-02 ran LIMIT11=32 BATCH11=32)
#   LIMIT=520 bash bench/gpu/issues.sh now STAGES...   # study stages in this call (under its 10 minutes), into $OUT
#   bash bench/gpu/issues.sh fetch    # a later call: the study's logs and sweeps so far, two tarballs under $OUT
# One step a call, alone: on 2026-12-02 grid, conf and race ran side by side in one call; each process planned its
# grid passes from the same free GPU memory and conf died out of memory (since then a pass retries with fewer items),
# the grid benchmark's point-by-point arm outlasted its 270 s and the race its 520 s.
# The tree of this call comes first on the path, so a step runs the code it was sent with.
set -uo pipefail
source bench/gpu/env.sh
export PYTHONPATH=$PWD:$R/site:$R/gguf
O=$R/out; mkdir -p "$O" "$OUT"
DEMO=rewind/demo/oft-math
stamp() { echo "[$(date +%T)] $*"; }

grid() {
  stamp "grid sweep: OFT demo adapter, cayley, 6 alphas, 32 items (the study's count)"
  timeout 420 python3 bench/grid_sweep.py --base smollm2 --adapter $DEMO --path cayley --alphas 0,0.2,0.4,0.6,0.8,1 \
    --limit 32 --skip generate --out "$OUT/grid_sweep_h200.jsonl" > "$OUT/grid_sweep.log" 2>&1
  stamp "grid sweep rc=$?"
}

gen() {  # each adapter's line is written when measured: a timeout keeps the first
  stamp "7B-shaped generation pass, 11 points, 256 new tokens"
  timeout 500 python3 bench/grid_sweep.py --skip sweep --gen-shape qwen --gen-methods lora,oft --points 11 \
    --batch 16 --tokens 512 --new-tokens 256 --out "$OUT/grid_sweep_h200.jsonl" > "$OUT/grid_gen.log" 2>&1
  stamp "7B generation pass rc=$?"; tail -n 3 "$OUT/grid_gen.log"
}

conf() {  # NAME ADAPTER ARGS...: a 256-item sweep into $O/sw/NAME; ARGS: its paths and extra flags (the race's)
  local name=$1 adapter=$2; shift 2
  stamp "$name: sweep $adapter $*"
  timeout "${LIMIT:-520}" python3 -m rewind.cli sweep --adapter "$adapter" --base smollm2 \
    --alphas "${ALPHAS:-0.2,0.4,0.6,0.8}" --include-path bench/tasks/math300 --target math-300 --limit 256 --batch-size 64 \
    --out "$O/sw/$name" "$@" > "$OUT/$name.log" 2>&1
  stamp "$name rc=$?"
}

LORA=docs/study/runs/lora-2026-12-02  # the study's LoRA recipe, retrained on 2026-12-02 (its README)

study() {  # STAGES...: each alone on the GPU, in the order given (default: all)
  export LIMIT=${LIMIT:-1500}
  local stages=("$@")
  [ $# -gt 0 ] || stages=(oft lora race search)
  for stage in "${stages[@]}"; do
    case $stage in
      oft) conf oft256 $DEMO --path cayley --path dense ;;  # ran 2026-12-02: docs/study/sweeps-256/oft
      lora) conf lora256 $LORA --path linear ;;  # ran 2026-12-02: docs/study/sweeps-256/lora
      race) conf race $DEMO --path cayley --path dense --race --budget 20360 --chunk 64 ;;  # = oft256's items
      agree)  # 16: base, final and cayley 0.4 point by point, their items against the saved grid sweep's
        ALPHAS=0.4 conf oft256-point $DEMO --path cayley --batch-points 1
        python3 bench/item_agreement.py docs/study/sweeps-256/oft "$O/sw/oft256-point" \
          --out "$OUT/item_agreement_h200.jsonl" > "$OUT/agree.log" 2>&1 ;;
      agree-lora)  # 16: the same for LoRA, against the saved grid sweep docs/study/sweeps-256/lora
        ALPHAS=0.4 conf lora256-point $LORA --path linear --batch-points 1
        python3 bench/item_agreement.py docs/study/sweeps-256/lora "$O/sw/lora256-point" \
          --out "$OUT/item_agreement_lora_h200.jsonl" > "$OUT/agree-lora.log" 2>&1 ;;
      agree-stacked)  # 16: base, final and cayley 0.4 in one stacked pass, against the saved point-by-point run
        ALPHAS=0.4 conf oft256-stacked $DEMO --path cayley --batch-points auto
        python3 bench/item_agreement.py "$O/sw/oft256-stacked" docs/study/sweeps-256/oft-point \
          --out "$OUT/item_agreement_stacked.jsonl" > "$OUT/agree-stacked.log" 2>&1 ;;
      agree-lora-stacked)  # 16: the same for the LoRA adapter, against docs/study/sweeps-256/lora-point
        ALPHAS=0.4 conf lora256-stacked $LORA --path linear --batch-points auto
        python3 bench/item_agreement.py "$O/sw/lora256-stacked" docs/study/sweeps-256/lora-point \
          --out "$OUT/item_agreement_lora_stacked.jsonl" > "$OUT/agree-lora-stacked.log" 2>&1 ;;
      sweep11) sweep11 ;;
      search)  # on the lora stage's sweep, or a copy of the one shipped (ran 2026-12-02): its points are free
        [ -d "$O/sw/lora256" ] || cp -r docs/study/sweeps-256/lora "$O/sw/lora256"
        stamp "search LoRA: 4 groups, 8 candidates"
        timeout 1500 python3 -m rewind.cli search --out "$O/sw/lora256" --groups 4 --budget 8 > "$OUT/search.log" 2>&1
        stamp "search rc=$?" ;;
    esac
  done
}

ALPHAS11=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1

sweep11() {  # 16: one 11-alpha sweep twice on the same items (BATCH11 items per batch both ways), kept in KEEP11
  # (default sw/sweep11); ARMS11=grid (or point): that sweep alone, the other arm's kept (two calls of under 10
  # minutes each); CUDNN11=1: on torch's default attention backends (grid_sweep.py --cudnn-attention).
  # Every generate, forward, task and phase timed into trace11.jsonl, and the
  # sweeps' results (per task seconds) in sweep11.tgz
  local keep=${KEEP11:-$O/sw/sweep11}
  stamp "sweep11: ${ARMS11:-grid,point}, OFT cayley + dense, 11 alphas, ${LIMIT11:-256} items, into $keep"
  local arm; for arm in ${ARMS11//,/ }; do rm -rf "${keep:?}/$arm"; done  # an arm run alone keeps the other
  timeout "${LIMIT:-1500}" python3 bench/grid_sweep.py --base smollm2 --adapter $DEMO --path cayley --path dense \
    --alphas $ALPHAS11 --include-path bench/tasks/math300 --target math-300 --general general-offline \
    --limit "${LIMIT11:-256}" --batch-size "${BATCH11:-64}" --keep "$keep" --skip generate \
    --arms "${ARMS11:-grid,point}" ${CUDNN11:+--cudnn-attention} --trace "$OUT/trace11.jsonl" \
    --out "$OUT/grid_sweep_h200.jsonl" > "$OUT/sweep11.log" 2>&1
  stamp "sweep11 rc=$?"
  (cd "$keep" && tar czf "$OUT/sweep11.tgz" ./*/results.jsonl ./*/summary.json); tail -n 3 "$OUT/sweep11.log"
  if [ -d "$keep/grid" ] && [ -d "$keep/point" ]; then  # arms of two calls: their items compared
    python3 bench/item_agreement.py "$keep/grid" "$keep/point" \
      --out "$OUT/item_agreement_sweep11.jsonl" > "$OUT/agree11.log" 2>&1; tail -n 25 "$OUT/agree11.log"
  fi
}

onepoint() {
  stamp "7B shape, LoRA r8: 11 points merged vs one grid pass, and one point both ways, 64 rows, 128 new tokens"
  timeout 400 python3 bench/grid_forward.py --shape qwen --device cuda --dtype bf16 --methods lora --kinds generate \
    --points 11 --batch 64 --tokens 256 --new-tokens 128 --reps 1 --profile --out "$OUT/grid_onepoint_h200.jsonl" \
    > "$OUT/onepoint.log" 2>&1
  stamp "onepoint rc=$?"; tail -n 60 "$OUT/onepoint.log"
}

cli() {  # the old way for base and final on the test split, against sweep11's point-by-point sweep
  stamp "old way: merge + lm_eval CLI per point"
  timeout 560 python3 bench/sweep_vs_cli.py --sweep "$O/sw/sweep11/point" --points base@0,final@1 \
    --out "$OUT/sweep_vs_cli_h200.jsonl" > "$OUT/cli.log" 2>&1
  stamp "cli rc=$?"; tail -n 8 "$OUT/cli.log"
}

pack() { (cd "$O/sw" && tar czf "$OUT/sweeps.tgz" .); tail -n 25 "$OUT"/*.log; }

export_bench() {
  stamp "cuda export of the demo adapter, verified against peft"
  timeout 120 python3 -m rewind.cli export --base smollm2 --adapter $DEMO --device cuda --verify --out /tmp/e1 \
    > "$OUT/export.log" 2>&1
  stamp "rc=$?"
  stamp "7B shape: rewind export vs merge_and_unload + save_pretrained vs a plain copy"
  timeout 420 python3 bench/export_rss.py --shape qwen --methods lora16,oft --devices cuda \
    --out "$OUT/export_rss_h200.jsonl" >> "$OUT/export.log" 2>&1
  stamp "rc=$?"
  tail -n 40 "$OUT/export.log"
}

case "${1:-}" in
  grid) grid ;;
  gen) gen ;;
  conf) mkdir -p "$O/sw"; conf oft256 $DEMO --path cayley --path dense; pack ;;
  race) mkdir -p "$O/sw"; conf race $DEMO --path cayley --path dense --race --budget 20360 --chunk 64; pack ;;
  study) shift; OUT=$O/logs; mkdir -p "$O/sw" "$OUT"; study "$@" ;;
  now) shift; mkdir -p "$O/sw"; study "$@"; tail -n 5 "$OUT"/*.log ;;  # study stages in the foreground, into $OUT
  fetch)  # two tarballs: at most 8 files come back a call
    (cd "$O" && tar czf "$OUT/logs.tgz" logs study.log) && (cd "$O/sw" && tar czf "$OUT/sweeps.tgz" .)
    tail -n 5 "$O"/logs/*.log ;;
  export) export_bench ;;
  onepoint) onepoint ;;
  cli) cli ;;
  *) echo "usage: issues.sh grid|gen|conf|race|export|onepoint|cli|study|fetch"; exit 2 ;;
esac
