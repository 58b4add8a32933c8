#!/usr/bin/env bash
# Prepare, HERE (with PyPI), what bench/gpu_check.sh needs on the GPU machine and does not find
# there (it has its own torch 2.11 and no network): into .whl/ (git-ignored), which the device
# call names in `carry`. Versions are the lock's. About 42 MB; the carried tree's limit is 64 MiB.
#   bash bench/gpu_wheels.sh && du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
rm -f .whl/*.whl .whl/*.tar.gz
lock() { grep -i "^$1==" requirements.lock | head -1; }
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# binary: PyAV (decoding; cp311-abi3 serves 3.12). Pure python with wheels on PyPI:
python3 -m pip download -q --no-deps "${PLATFORM[@]}" -d .whl \
    "$(lock av)" "$(lock diffusers)" "$(lock galore-torch)" "$(lock ftfy)" "$(lock wcwidth)"
# peft 0.13.2, kept apart: installed only if colossalai 0.5.0 does not import with the machine's peft
mkdir -p .whl/peft && rm -f .whl/peft/*.whl
python3 -m pip download -q --no-deps "${PLATFORM[@]}" -d .whl/peft "$(lock peft)"
# colossalai 0.5.0 and contexttimer exist on PyPI as sdists only: pack the lock's installed copies
# (pure python; ColossalAI compiles its kernels on the GPU machine on first use, with nvcc and ninja)
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
tar -czf .whl/site-extra.tar.gz -C "$SITE" --exclude=__pycache__ \
    colossalai colossalai-0.5.0.dist-info contexttimer $(cd "$SITE" && ls -d contexttimer-*.dist-info)
ls -la .whl .whl/peft
du -sh .whl
