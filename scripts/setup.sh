#!/usr/bin/env bash
# Install latent-agents into .venv on a fresh machine: the CPU torch first (so nothing pulls CUDA builds),
# then the project with its test extras, then Chromium for static figure export where apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
     && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1; then
    echo "setup: installed chromium for PNG/PDF figure export"
  else
    echo "setup: chromium not available; figures will be written as HTML only"
  fi
fi
