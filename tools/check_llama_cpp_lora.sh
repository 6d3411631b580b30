#!/usr/bin/env bash
# Checks that llama.cpp applies what `qlora export --adapter-only --format gguf` writes as qlora
# merges it: the logits of base + LoRA GGUF (applied at run time, as `llama-cli --lora` does)
# against those of the merged GGUF `qlora export --format gguf` writes, both F32.
#
#   tools/check_llama_cpp_lora.sh [RUN_OR_ADAPTER_DIR [--ema]]
#   BASE=models/gemma-3-270m.Q4_K_M.gguf tools/check_llama_cpp_lora.sh RUN   # an adapter trained on BASE
#
# Without a directory it trains one: `qlora train --max-steps 3` on SmolLM2-135M-Instruct.Q4_1
# with rsLoRA (r 8, alpha 16, lr 1e-3, so B is well away from zero and the alpha·√r of the file
# is exercised). Then, all from the same adapter and base:
#   base.f32.gguf     qlora export --format gguf --type f32                 (the dequantized base)
#   merged.f32.gguf   qlora export --format gguf --type f32 --adapter DIR   (W' = W + s·B·A)
#   adapter.gguf      qlora export --adapter-only --format gguf --adapter DIR
# and tools/llama_cpp_lora_logits.cpp runs the first 128 tokens of data/demo-sft/val.jsonl through
#   [0] base.f32.gguf + adapter.gguf   (reference: llama.cpp applying the LoRA)
#   [1] merged.f32.gguf                must be within max(1e-4, 2 × [2]'s) of [0]'s max |logit|
#   [2] base.f32.gguf + adapter.gguf at scale 0.5, twice: the same sum rounded differently, so
#       llama.cpp's own f32 noise on this model. It is ≈ 1e-6 on SmolLM2 but ≈ 6e-4 on Gemma:
#       ggml's GELU rounds its input to F16 for a table lookup, which turns f32 noise into F16 steps.
#   [3] base.f32.gguf                  the adapter's own effect: must be 100× larger than [1]'s
#   [4] the 4-bit base + adapter.gguf  reported only (llama.cpp rounds activations to 8 bits for it)
# printing each run's perplexity. Exits non-zero when a check fails.
#
# llama.cpp: the source vendored in the llama-cpp-python 0.3.36 sdist from PyPI (llama.cpp commit
# 0c1e570), only its libllama built (cmake, -j2, CPU, Release), cached in .build-llama-cpp/
# (gitignored) and reused by later runs. Needs pip, cmake and a C++ compiler
# (apt-get install -y cmake g++). CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYPI_VERSION=0.3.36
CACHE=.build-llama-cpp
SRC="$CACHE/llama_cpp_python-$PYPI_VERSION/vendor/llama.cpp"
BASE="${BASE:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
N_TOKENS=128

for tool in pip cmake c++; do
    command -v "$tool" > /dev/null || { echo "needs $tool (apt-get install -y cmake g++; pip comes with Python)" >&2; exit 2; }
done
[ -f "$BASE" ] || { echo "$BASE is missing: run tools/setup.sh" >&2; exit 2; }

if [ ! -d "$SRC" ]; then
    mkdir -p "$CACHE"
    pip download --no-deps --no-binary :all: "llama-cpp-python==$PYPI_VERSION" -d "$CACHE"
    tar -xzf "$CACHE/llama_cpp_python-$PYPI_VERSION.tar.gz" -C "$CACHE" "llama_cpp_python-$PYPI_VERSION/vendor/llama.cpp"
fi
if [ ! -f "$CACHE/build/bin/libllama.so" ]; then
    cmake -S "$SRC" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_OPENMP=OFF \
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF
    cmake --build "$CACHE/build" -j2 --target llama
fi
PROGRAM="$CACHE/llama_cpp_lora_logits"
if [ ! -x "$PROGRAM" ] || [ tools/llama_cpp_lora_logits.cpp -nt "$PROGRAM" ]; then
    c++ -O2 -std=c++17 -I "$SRC/include" -I "$SRC/ggml/include" tools/llama_cpp_lora_logits.cpp \
        -L "$CACHE/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$PWD/$CACHE/build/bin" -o "$PROGRAM"
fi

swift build --product qlora
QLORA="$(swift build --show-bin-path)/qlora"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ $# -ge 1 ]; then
    ADAPTER="$1"; shift
else
    "$QLORA" train --model "$BASE" --max-steps 3 --max-len 64 --batch-size 2 --lr 1e-3 --use-rslora --lora-r 8 --lora-alpha 16 \
        --no-plan --out "$WORK/run"
    ADAPTER="$WORK/run"
fi
"$QLORA" export --model "$BASE" --format gguf --type f32 -o "$WORK/base.f32.gguf"
"$QLORA" export --model "$BASE" --adapter "$ADAPTER" "$@" --format gguf --type f32 -o "$WORK/merged.f32.gguf"
"$QLORA" export --model "$BASE" --adapter "$ADAPTER" "$@" --adapter-only --format gguf -o "$WORK/adapter.gguf"

head -c 4000 data/demo-sft/val.jsonl > "$WORK/text.txt"
"$PROGRAM" "$WORK/text.txt" "$N_TOKENS" "$WORK/base.f32.gguf+$WORK/adapter.gguf" "$WORK/merged.f32.gguf" \
    "$WORK/base.f32.gguf+$WORK/adapter.gguf@0.5+$WORK/adapter.gguf@0.5" "$WORK/base.f32.gguf" "$BASE+$WORK/adapter.gguf" \
    | tee "$WORK/result.txt"
awk '$1 == "RESULT" { err[$2] = $3 }
     END {
         tolerance = (2 * err[2] > 1e-4 ? 2 * err[2] : 1e-4)
         ok = (err[1] <= tolerance && err[3] > 100 * err[1])
         ratio = (err[1] > 0 ? err[3] / err[1] : 0)
         printf "%s base + LoRA vs merged: %.2e of max |logit| (tolerance %.1e; llama.cpp'"'"'s own f32 noise %.2e); the adapter moves the base by %.2e (%.0f× that)\n",
                (ok ? "ok  " : "FAIL"), err[1], tolerance, err[2], err[3], ratio
         exit (ok ? 0 : 1)
     }' "$WORK/result.txt"
