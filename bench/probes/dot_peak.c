// The core's bf16 dot-product peak, to compare the host matrix routine with (`kc bench --calibrate`
// measures the routine itself). 16 independent `vdpbf16ps zmm` (8 row broadcasts × 2 panels, the
// operand pattern of the routine's `dot_rows`, all distinct registers) in inline assembly, so that no
// compiler merges equal accumulator chains; and the clock, from a chain of dependent adds.
//
//   gcc -O2 -mavx512f -mavx512bf16 bench/probes/dot_peak.c -o /tmp/dot_peak && /tmp/dot_peak
//
// Needs AVX512-BF16. Session 30 (AMD EPYC, Zen 5): 474-498 GFLOP/s at 3.7-3.9 GHz, two per cycle.
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define DP(acc, x, y) "vdpbf16ps %%zmm" #y ", %%zmm" #x ", %%zmm" #acc "\n"
#define ROW(r, acc0, acc1) DP(acc0, r, 24) DP(acc1, r, 25)

int main(void) {
    const long n = 100000000;
    long x = 0;
    double t = now();
    for (long i = 0; i < n; i++) __asm__ volatile("add $1,%0\n add $1,%0\n add $1,%0\n add $1,%0" : "+r"(x));
    double ghz = n * 4.0 / (now() - t) / 1e9;
    // Operands: 1.0 and 0.5 as bf16 pairs (normal numbers: no denormal on any path), accumulators zero.
    const int one = 0x3f803f80, half = 0x3f003f00;
    __asm__ volatile("vpbroadcastd %0, %%zmm16\n vpbroadcastd %0, %%zmm17\n vpbroadcastd %0, %%zmm18\n"
                     "vpbroadcastd %0, %%zmm19\n vpbroadcastd %0, %%zmm20\n vpbroadcastd %0, %%zmm21\n"
                     "vpbroadcastd %0, %%zmm22\n vpbroadcastd %0, %%zmm23\n vpbroadcastd %1, %%zmm24\n"
                     "vpbroadcastd %1, %%zmm25\n"
                     :
                     : "m"(one), "m"(half)
                     : "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25");
#define Z(r) "vpxord %%xmm" #r ", %%xmm" #r ", %%xmm" #r "\n"
    __asm__ volatile(Z(0) Z(1) Z(2) Z(3) Z(4) Z(5) Z(6) Z(7) Z(8) Z(9) Z(10) Z(11) Z(12) Z(13) Z(14) Z(15)
                     ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    t = now();
    for (long i = 0; i < n; i++)
        __asm__ volatile(ROW(16, 0, 1) ROW(17, 2, 3) ROW(18, 4, 5) ROW(19, 6, 7) ROW(20, 8, 9) ROW(21, 10, 11)
                             ROW(22, 12, 13) ROW(23, 14, 15)
                         ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                           "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    double s = now() - t;
    double dps = n * 16.0 / s;
    printf("clock %.2f GHz; vdpbf16ps zmm: %.0f GFLOP/s (%.2f per cycle)\n", ghz, dps * 64 / 1e9, dps / (ghz * 1e9));
    return 0;
}
