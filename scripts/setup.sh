#!/usr/bin/env bash
# Create or refresh .venv from requirements.lock (exact pins), then install this project editable.
# Idempotent: a stamp holding the lock file's hash skips the work when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
venv="$root/.venv"
stamp="$venv/.lock-stamp"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check uv
# uv pip sync installs exactly the lock (and removes anything else), so torch cannot drift;
# bytecode is compiled once here (imports stay fast even with PYTHONDONTWRITEBYTECODE set).
"$venv/bin/python" -m uv pip sync -q --compile-bytecode --python "$venv/bin/python" requirements.lock
"$venv/bin/python" -m uv pip install -q --python "$venv/bin/python" --no-deps -e .
echo "$want" > "$stamp"
