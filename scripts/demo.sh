#!/usr/bin/env bash
# Set up .venv (if needed) and run the end-to-end demo on generated sample videos.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python cli.py demo "$@"
