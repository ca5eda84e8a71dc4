#!/usr/bin/env bash
# Pack what the study has so far into $OUT as 15 MiB pieces (the device tool returns at most 8 files of 16 MiB):
# logs, sweeps and reports; with `full`, the final adapters too. Checkpoints and full-model weights stay.
set -uo pipefail
O=$HOME/rw/out
cd "$O" || exit 1
tail -n 40 driver.log 2>/dev/null
weights=(! -name '*.safetensors'); [ "${1:-}" = full ] && weights=()
find . -type f -size -30M ! -path '*/checkpoint-*' ! -name 'training_args.bin' "${weights[@]}" | sort > /tmp/pack.list
tar czf /tmp/pack.tgz -T /tmp/pack.list
split -b 15M -d /tmp/pack.tgz "$OUT/pack.tgz."
ls -la "$OUT"
