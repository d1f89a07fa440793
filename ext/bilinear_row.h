/* Bilinear samples along one output row of an affine warp, 64 at a time with AVX-512 VBMI.
 *
 * The samples of 64 consecutive output pixels lie within a few source rows and at most 128
 * bytes of each (|step| <= 1.9 px along both axes). Rather than gather four bytes a pixel,
 * which costs ~1 ns a pixel on the CPUs measured, each of those source rows is loaded once as
 * a 128-byte table and two byte permutes (vpermi2b) pick every lane's left and right
 * neighbour from it; lanes whose top (bottom) neighbour row is that row keep them. The
 * bilinear sums run on 16-bit lanes at 1/64 grey level (vpmulhrsw rounds each product), within
 * one grey level of 8-bit weights applied in 32-bit arithmetic.
 *
 * Positions are 32.32 fixed point, as the Numba kernel that calls this keeps them, truncated to
 * 1/256 pixel exactly as it does.
 */
#ifndef HELIOSTAT_BILINEAR_ROW_H
#define HELIOSTAT_BILINEAR_ROW_H

#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HS_HAVE_VBMI 1
#define HS_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#endif

/* Largest step along either axis, in pixels: 64 steps and the right neighbour fit 128 bytes. */
#define HS_MAX_STEP 1.9

static int hs_bilinear_row_supported(void) {
#ifdef HS_HAVE_VBMI
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vbmi");
#else
    return 0;
#endif
}

#ifdef HS_HAVE_VBMI
/* 64 bytes from p, no byte at or past end read (a masked load does not fault). */
HS_VBMI static inline __m512i hs_load64(const uint8_t *p, const uint8_t *end) {
    if (p + 64 <= end) return _mm512_loadu_si512((const void *)p);
    if (p >= end) return _mm512_setzero_si512();
    return _mm512_maskz_loadu_epi8((__mmask64)((1ULL << (end - p)) - 1), p);
}

HS_VBMI static inline __m512i hs_bytes(__m512i lo, __m512i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(lo)),
                              _mm512_cvtepi16_epi8(hi), 1);
}

/* Positions of 64 lanes in 1/256 px from the run's table corner: base + kh[k] + the carry of
 * low + kl[k] out of 24 bits, as two vectors of 32 16-bit lanes. */
HS_VBMI static inline void hs_positions(const int16_t *kh, const uint32_t *kl, int64_t base,
                                        uint32_t low, __m512i *lo, __m512i *hi) {
    const __m512i b = _mm512_set1_epi32((int)low);
    __m256i carry[4];
    for (int j = 0; j < 4; j++)
        carry[j] = _mm512_cvtepi32_epi16(
            _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_loadu_si512(kl + 16 * j)), 24));
    const __m512i base16 = _mm512_set1_epi16((short)base);
    *lo = _mm512_add_epi16(
        _mm512_add_epi16(_mm512_loadu_si512(kh), base16),
        _mm512_inserti64x4(_mm512_castsi256_si512(carry[0]), carry[1], 1));
    *hi = _mm512_add_epi16(
        _mm512_add_epi16(_mm512_loadu_si512(kh + 32), base16),
        _mm512_inserti64x4(_mm512_castsi256_si512(carry[2]), carry[3], 1));
}

HS_VBMI static inline __m512i hs_widen64(__m512i bytes, int half) {
    return _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(bytes, half)), 6);
}

/* out[i] = bilinear sample of the (size-byte) image src, rows pitch bytes apart, at 32.32
 * (px + i*ax, py + i*ay), i < n. Every sample must have its four neighbours inside the image,
 * and |ax|, |ay| <= HS_MAX_STEP pixels. */
HS_VBMI static void hs_bilinear_row(const uint8_t *src, int64_t size, int64_t pitch, int64_t px,
                                    int64_t py, int64_t ax, int64_t ay, int64_t n,
                                    uint8_t *out) {
    const uint8_t *end = src + size;
    /* Lane k's offset k·step in 1/256 px, split into its whole part and the 24 bits below, so
     * that a run's position plus it is exact: the carry out of the low bits is added per lane. */
    int16_t kxh[64], kyh[64];
    uint32_t kxl[64], kyl[64];
    for (int k = 0; k < 64; k++) {
        kxh[k] = (int16_t)((k * ax) >> 24);
        kyh[k] = (int16_t)((k * ay) >> 24);
        kxl[k] = (uint32_t)((k * ax) & 0xFFFFFF);
        kyl[k] = (uint32_t)((k * ay) & 0xFFFFFF);
    }
    const __m512i low8 = _mm512_set1_epi16(255), one = _mm512_set1_epi8(1);
    const __m512i half = _mm512_set1_epi16(32);
    for (int64_t u = 0; u < n; u += 64) {
        const int count = n - u < 64 ? (int)(n - u) : 64;
        const int64_t sx = px + u * ax, sy = py + u * ay;
        const int64_t x8 = sx >> 24, y8 = sy >> 24;
        const int64_t x8_last = (sx + (count - 1) * ax) >> 24;
        const int64_t y8_last = (sy + (count - 1) * ay) >> 24;
        const int64_t xb = (x8 < x8_last ? x8 : x8_last) >> 8;
        const int64_t yb = (y8 < y8_last ? y8 : y8_last) >> 8;
        const int rows = (int)(((y8 > y8_last ? y8 : y8_last) >> 8) - yb) + 2;
        __m512i X0, X1, Y0, Y1;
        hs_positions(kxh, kxl, x8 - xb * 256, (uint32_t)(sx & 0xFFFFFF), &X0, &X1);
        hs_positions(kyh, kyl, y8 - yb * 256, (uint32_t)(sy & 0xFFFFFF), &Y0, &Y1);
        const __m512i dx = hs_bytes(_mm512_srli_epi16(X0, 8), _mm512_srli_epi16(X1, 8));
        const __m512i dy = hs_bytes(_mm512_srli_epi16(Y0, 8), _mm512_srli_epi16(Y1, 8));
        const __m512i dx1 = _mm512_add_epi8(dx, one);
        const uint8_t *rp = src + yb * pitch + xb;
        __m512i tl = _mm512_setzero_si512(), tr = tl, bl = tl, br = tl;
        __mmask64 above = 0;
        for (int r = 0; r < rows; r++, rp += pitch) {
            const __m512i t0 = hs_load64(rp, end), t1 = hs_load64(rp + 64, end);
            const __m512i left = _mm512_permutex2var_epi8(t0, dx, t1);
            const __m512i right = _mm512_permutex2var_epi8(t0, dx1, t1);
            const __mmask64 here = _mm512_cmpeq_epi8_mask(dy, _mm512_set1_epi8((char)r));
            tl = _mm512_mask_mov_epi8(tl, here, left);
            tr = _mm512_mask_mov_epi8(tr, here, right);
            bl = _mm512_mask_mov_epi8(bl, above, left);
            br = _mm512_mask_mov_epi8(br, above, right);
            above = here;
        }
        __m512i res[2];
        for (int h = 0; h < 2; h++) {
            const __m512i fx = _mm512_slli_epi16(_mm512_and_si512(h ? X1 : X0, low8), 7);
            const __m512i fy = _mm512_slli_epi16(_mm512_and_si512(h ? Y1 : Y0, low8), 7);
            const __m512i a = hs_widen64(tl, h), b = hs_widen64(tr, h);
            const __m512i c = hs_widen64(bl, h), d = hs_widen64(br, h);
            const __m512i top = _mm512_add_epi16(a, _mm512_mulhrs_epi16(_mm512_sub_epi16(b, a), fx));
            const __m512i bot = _mm512_add_epi16(c, _mm512_mulhrs_epi16(_mm512_sub_epi16(d, c), fx));
            const __m512i mid =
                _mm512_add_epi16(top, _mm512_mulhrs_epi16(_mm512_sub_epi16(bot, top), fy));
            res[h] = _mm512_srli_epi16(_mm512_add_epi16(mid, half), 6);
        }
        const __m512i bytes = hs_bytes(res[0], res[1]);
        /* A masked store is several times slower than a plain one on Zen 4: only the tail. */
        if (count == 64)
            _mm512_storeu_si512((void *)(out + u), bytes);
        else
            _mm512_mask_storeu_epi8(out + u, (__mmask64)((1ULL << count) - 1), bytes);
    }
}
#else
static void hs_bilinear_row(const uint8_t *src, int64_t size, int64_t pitch, int64_t px,
                            int64_t py, int64_t ax, int64_t ay, int64_t n, uint8_t *out) {
    (void)src, (void)size, (void)pitch, (void)px, (void)py, (void)ax, (void)ay, (void)n,
        (void)out;
}
#endif

#endif
