#!/usr/bin/env bash
# The AMX checks of issue 15, for the first session whose CPU has AMX-BF16 (Sapphire Rapids
# and later; none had by session 12). On any other CPU it says why it cannot run and stops.
#   1. qlora info: the bf16 kernel chosen and why (AMX needs CPUID, XCR0, arch_prctl and the
#      start-up check against vdpbf16ps)
#   2. every bf16 GEMM test on the tiles themselves (AMXTileBF16GEMMTests; skipped elsewhere)
#   3. bench gemm --dtype bf16, AMX and vdpbf16ps beside dense sgemm, the 4096-wide shapes at
#      T = 256 and 1024 (goal: AMX ≥ 4× dense)
#   4. bench train --against-fp32 with AMX, then with QLORA_BF16_KERNEL=avx512 (the ratio the
#      vdpbf16ps kernel gives on the same machine), SmolLM2 r16 4 × 256
# Quote every figure with the CPU printed first.
#
#   benches/amx.sh [RUNS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
swift build -c release --product qlora >&2
q=.build/release/qlora
grep -m1 "model name" /proc/cpuinfo
$q info | grep -E "^(cpu|bf16 kernel):"
if ! $q info | grep -q "^bf16 kernel: amx"; then
    echo "no AMX here: $($q info | grep '^bf16 kernel:')" >&2
    exit 1
fi
swift test --filter AMXTileBF16GEMMTests
$q bench gemm --dtype bf16 --bf16-kernels avx512_bf16,amx --shapes 4096x4096,11008x4096,4096x11008 \
    --tokens 256,1024 --formats nf4,q4_0,q4_k --runs "$runs"
for kernel in auto avx512; do
    echo "== bench train, QLORA_BF16_KERNEL=$kernel"
    QLORA_BF16_KERNEL=$kernel $q bench train --rank 16 --batch 4 --length 256 --compute-dtype bf16 --against-fp32 --steps 8 \
        2>/dev/null | grep -E "bf16 kernel|speed-up|tokens/s"
done
