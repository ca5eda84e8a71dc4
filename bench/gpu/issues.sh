#!/usr/bin/env bash
# On the GPU box, after setup.sh, one step per device call (each under 10 minutes); results under $OUT.
#   bash bench/gpu/issues.sh grid     # issue 16: grid vs point-by-point sweep, agreement, 7B generation, fused branch
#   bash bench/gpu/issues.sh conf     # issue 17: sweeps with paired intervals at 256 items, racing, search
#   bash bench/gpu/issues.sh export   # issue 19: pipelined export on the 7B shape against the old way and a copy
# The tree of this call comes first on the path, so a step runs the code it was sent with.
set -uo pipefail
source bench/gpu/env.sh
export PYTHONPATH=$PWD:$R/site:$R/gguf
O=$R/out; mkdir -p "$O" "$OUT"
DEMO=rewind/demo/oft-math
stamp() { echo "[$(date +%T)] $*"; }

grid() {
  stamp "grid sweep: OFT demo adapter, both paths, 11 alphas, 32 items (the study's count)"
  timeout 330 python3 bench/grid_sweep.py --base smollm2 --adapter $DEMO --path cayley --path dense --limit 32 \
    --skip generate --out "$OUT/grid_sweep_h200.jsonl" > "$OUT/grid_sweep.log" 2>&1
  stamp "rc=$?"
  stamp "7B-shaped generation pass: 11 points, 256 new tokens"
  timeout 120 python3 bench/grid_sweep.py --skip sweep --gen-shape qwen --points 11 --batch 16 --tokens 512 \
    --new-tokens 256 --out "$OUT/grid_sweep_h200.jsonl" >> "$OUT/grid_sweep.log" 2>&1
  stamp "rc=$?"
  if [ -f bench/grid_branch.py ]; then
    stamp "fused low-rank branch against the merged forward"
    timeout 90 python3 bench/grid_branch.py --out "$OUT/grid_branch_h200.jsonl" > "$OUT/grid_branch.log" 2>&1
    stamp "rc=$?"
  fi
  tail -n 30 "$OUT"/*.log
}

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
  export) export_bench ;;
  *) echo "usage: issues.sh grid|conf|export"; exit 2 ;;
esac
