/* cpu.c — CPU feature detection by CPUID and XGETBV, and the SIMD level the dequantizers
 * use. Nothing is assumed about the machine: a level is offered only when both the CPU
 * reports it and the OS saves its registers. */
#include "quant_kernels.h"
#include <cpuid.h>
#include <string.h>

static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

void qk_cpu_detect(qk_cpu_info *info) {
    memset(info, 0, sizeof *info);
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    unsigned max_leaf = a;
    memcpy(info->vendor + 0, &b, 4);
    memcpy(info->vendor + 4, &d, 4);
    memcpy(info->vendor + 8, &c, 4);
    __get_cpuid(1, &a, &b, &c, &d);
    int base_family = (a >> 8) & 0xF, base_model = (a >> 4) & 0xF;
    info->family = base_family == 0xF ? base_family + ((a >> 20) & 0xFF) : base_family;
    info->model = (base_family == 0x6 || base_family == 0xF) ? (((a >> 16) & 0xF) << 4) | base_model : base_model;
    info->sse3 = (c >> 0) & 1;
    info->fma = (c >> 12) & 1;
    info->avx = (c >> 28) & 1;
    info->f16c = (c >> 29) & 1;
    int osxsave = (c >> 27) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    info->os_avx = (xcr0 & 0x6) == 0x6;                    /* SSE and AVX state */
    info->os_avx512 = info->os_avx && (xcr0 & 0xE0) == 0xE0; /* opmask, ZMM_Hi256, Hi16_ZMM */
    info->os_amx = (xcr0 & 0x60000) == 0x60000;              /* XTILECFG, XTILEDATA */
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        info->avx2 = (b >> 5) & 1;
        info->avx512f = (b >> 16) & 1;
        info->avx512bw = (b >> 30) & 1;
        info->avx512vl = (b >> 31) & 1;
        info->avx512_vbmi = (c >> 1) & 1;
        info->avx512_vnni = (c >> 11) & 1;
        info->amx_bf16 = (d >> 22) & 1;
        info->amx_tile = (d >> 24) & 1;
        unsigned sub = a;
        if (sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            info->avx512_bf16 = (a >> 5) & 1;
        }
    }
    unsigned ext = __get_cpuid_max(0x80000000, 0);
    if (ext >= 0x80000004) {
        unsigned regs[12];
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002 + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
        memcpy(info->brand, regs, 48);
        info->brand[48] = 0;
    }
}

qk_isa qk_isa_best(void) {
    static int best = -1;
    if (best < 0) {
        qk_cpu_info i;
        qk_cpu_detect(&i);
        if (i.os_avx512 && i.avx512f && i.avx512bw && i.avx512vl) best = QK_ISA_AVX512;
        else if (i.os_avx && i.avx2 && i.fma) best = QK_ISA_AVX2;
        else best = QK_ISA_SCALAR;
    }
    return (qk_isa)best;
}

static int current_isa = -1;

qk_isa qk_isa_get(void) {
    if (current_isa < 0) current_isa = qk_isa_best();
    return (qk_isa)current_isa;
}

int qk_isa_set(qk_isa isa) {
    if (isa > qk_isa_best()) return -1;
    current_isa = isa;
    return 0;
}
