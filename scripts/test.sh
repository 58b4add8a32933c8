#!/usr/bin/env bash
# Set up .venv (if needed), lint, and run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
# The report's browser test needs headless Chromium (Debian's package); the real vLLM captioning
# test needs vLLM's own environment (.venv-vllm, never the project's torch).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    echo "tests need headless Chromium: sudo apt-get install -y chromium" >&2
  fi
fi
bash "$root/scripts/setup_vllm.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
