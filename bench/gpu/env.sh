# Sourced on the GPU box: the installed wheels, the embedded model's GGUF and rewind's cache, all under ~/rw.
R=$HOME/rw
export PYTHONPATH=$R/repo:$R/site:$R/gguf PATH=$R/site/bin:$PATH REWIND_HOME=$R/home
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# Many processes share 16 cores: a thread pool per process each the size of the machine would oversubscribe it.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rewind() { python3 -m rewind.cli "$@"; }
