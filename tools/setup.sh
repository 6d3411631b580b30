#!/usr/bin/env bash
# Installs what qlora needs on a fresh Debian machine: OpenBLAS (loaded at run time, pthread
# flavour) and LLVM's OpenMP runtime. Idempotent: does nothing when both are present.
set -euo pipefail
packages=(libopenblas-dev libomp-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
