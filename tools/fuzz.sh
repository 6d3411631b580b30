#!/usr/bin/env bash
# Builds the file-reader fuzzers with libFuzzer + AddressSanitizer and runs each for SECONDS
# (default 60), starting from the committed seed corpus (Fuzz/corpus/<reader>, which the run
# never modifies). Exits non-zero on the first crash, leaving crash-* files in .build-fuzz/.
# Usage: tools/fuzz.sh [SECONDS] [gguf|safetensors|tokenizer|chat-template|train-config|adapter|sft-rows|checkpoint|model-config ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
readers=("${@:-gguf}")
[ $# -gt 0 ] || readers=(gguf safetensors tokenizer chat-template train-config adapter sft-rows checkpoint model-config)
for reader in "${readers[@]}"; do
  swift build --scratch-path .build-fuzz --product "fuzz-$reader" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -parse-as-library \
    -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld 2>&1 | grep -E "error|Compiling|Build complete" | grep -v "Cannot export" || true
  work=".build-fuzz/corpus-$reader"
  mkdir -p "$work"
  log=".build-fuzz/fuzz-$reader.log"
  # The readers given paths go through Foundation's FileManager.contents(atPath:), which leaks
  # 4 KiB on some inputs in this toolchain (FoundationEssentials' readBytesFromFile): leak
  # detection stays on for the in-memory readers only.
  case "$reader" in gguf|safetensors) leaks=1 ;; *) leaks=0 ;; esac
  if ! (cd .build-fuzz && ASAN_OPTIONS="detect_leaks=$leaks" "./debug/fuzz-$reader" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -detect_leaks=$leaks \
        "corpus-$reader" "../Fuzz/corpus/$reader" >"fuzz-$reader.log" 2>&1); then
    grep -E "ERROR|Fatal|SUMMARY|Test unit written" "$log" | head -20
    echo "fuzz-$reader: FAILED (log: $log)"
    exit 1
  fi
  echo "fuzz-$reader: $(grep -E '^Done' "$log") with no crash; corpus $(ls "$work" | wc -l) inputs"
done
