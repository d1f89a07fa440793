/* Bilinear samples along one output row of an affine warp, 32 at a time with AVX-512 VBMI.
 *
 * The samples of 32 consecutive output pixels lie within a few source rows and at most 64
 * bytes of each (|step| <= 1.9 px along both axes). Rather than gather four bytes a pixel,
 * which costs ~1 ns a pixel on the CPUs measured, each of those source rows is loaded once as
 * a 64-byte table and two byte permutes (vpermi2b) pick every lane's left and right neighbour
 * from it; lanes whose top (bottom) neighbour row is that row keep them. Runs of 32 in 256-bit
 * registers rather than 64 in 512-bit ones: a run crosses ~32·step + 2 rows, each costing the
 * same few operations over the run, and a 512-bit operation is two on Zen 4; 20–30 % faster
 * (measured at ±10° and 20°). The bilinear sums run on 16-bit lanes at 1/64 grey level
 * (vpmulhrsw rounds each product), within one grey level of 8-bit weights in 32-bit arithmetic.
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
#define HS_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vl")))
#endif

/* Largest step along either axis, in pixels: 32 steps and the right neighbour fit 64 bytes. */
#define HS_MAX_STEP 1.9

static int hs_bilinear_row_supported(void) {
#ifdef HS_HAVE_VBMI
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi");
#else
    return 0;
#endif
}

#ifdef HS_HAVE_VBMI
/* 32 bytes from p, no byte at or past end read (a masked load does not fault). */
HS_VBMI static inline __m256i hs_load32(const uint8_t *p, const uint8_t *end) {
    if (p + 32 <= end) return _mm256_loadu_si256((const __m256i *)p);
    if (p >= end) return _mm256_setzero_si256();
    return _mm256_maskz_loadu_epi8((__mmask32)((1ULL << (end - p)) - 1), p);
}

/* Positions of 32 lanes in 1/256 px from the run's table corner: base + kh[k] + the carry of
 * low + kl[k] out of 24 bits (kh, kl: lane k's offset k·step split at 1/256 px, so that the sum
 * is exact). */
HS_VBMI static inline __m512i hs_positions(const int16_t *kh, const uint32_t *kl, int64_t base,
                                             uint32_t low) {
    /* low + kl[k] carries out of 24 bits where kl[k] > 2^24 - 1 - low: a compare a lane and a
     * masked add, rather than narrowing 32-bit sums to 16 bits. */
    const __m512i t = _mm512_set1_epi32((int)(0xFFFFFF - low));
    const __mmask32 carry = _mm512_kunpackw(_mm512_cmpgt_epu32_mask(_mm512_loadu_si512(kl + 16), t),
                                            _mm512_cmpgt_epu32_mask(_mm512_loadu_si512(kl), t));
    const __m512i x = _mm512_add_epi16(_mm512_loadu_si512(kh), _mm512_set1_epi16((short)base));
    return _mm512_mask_add_epi16(x, carry, x, _mm512_set1_epi16(1));
}

/* out[i] = bilinear sample of the (size-byte) image src, rows pitch bytes apart, at 32.32
 * (px + i*ax, py + i*ay), i < n. Every sample must have its four neighbours inside the image,
 * and |ax|, |ay| <= HS_MAX_STEP pixels. */
HS_VBMI static void hs_bilinear_row(const uint8_t *src, int64_t size, int64_t pitch, int64_t px,
                                    int64_t py, int64_t ax, int64_t ay, int64_t n,
                                    uint8_t *out) {
    const uint8_t *end = src + size;
    int16_t kxh[32], kyh[32];
    uint32_t kxl[32], kyl[32];
    for (int k = 0; k < 32; k++) {
        kxh[k] = (int16_t)((k * ax) >> 24);
        kyh[k] = (int16_t)((k * ay) >> 24);
        kxl[k] = (uint32_t)((k * ax) & 0xFFFFFF);
        kyl[k] = (uint32_t)((k * ay) & 0xFFFFFF);
    }
    const __m512i low8 = _mm512_set1_epi16(255);
    const __m256i one = _mm256_set1_epi8(1);
    const __m512i half = _mm512_set1_epi16(32);
    /* Every run loops over as many rows as the most any crosses: a trip count that changes
     * from run to run mispredicts the loop's exit, and the flush serialises the runs. */
    const int rows = (int)(((31 * (ay < 0 ? -ay : ay)) >> 32) + 3);
    for (int64_t u = 0; u < n; u += 32) {
        const int count = n - u < 32 ? (int)(n - u) : 32;
        const int64_t sx = px + u * ax, sy = py + u * ay;
        const int64_t x8 = sx >> 24, y8 = sy >> 24;
        const int64_t x8_last = (sx + (count - 1) * ax) >> 24;
        const int64_t y8_last = (sy + (count - 1) * ay) >> 24;
        const int64_t xb = (x8 < x8_last ? x8 : x8_last) >> 8;
        const int64_t yb = (y8 < y8_last ? y8 : y8_last) >> 8;
        const __m512i X = hs_positions(kxh, kxl, x8 - xb * 256, (uint32_t)(sx & 0xFFFFFF));
        const __m512i Y = hs_positions(kyh, kyl, y8 - yb * 256, (uint32_t)(sy & 0xFFFFFF));
        const __m256i dx = _mm512_cvtepi16_epi8(_mm512_srli_epi16(X, 8));
        const __m256i dy = _mm512_cvtepi16_epi8(_mm512_srli_epi16(Y, 8));
        const __m256i dx1 = _mm256_add_epi8(dx, one);
        const uint8_t *rp = src + yb * pitch + xb;
        __m256i tl = _mm256_setzero_si256(), tr = tl, bl = tl, br = tl;
        /* Row r's neighbours go to the lanes whose top row it is (dy == r) and to those whose
         * bottom row it is (dy + 1 == r). */
        const __m256i dy1 = _mm256_add_epi8(dy, one);
        __m256i rv = _mm256_setzero_si256();
        /* Tables inside the image (all but the last rows' runs) need no test a row. */
        const int inside = rp + (rows - 1) * pitch + 64 <= end;
        for (int r = 0; r < rows; r++, rp += pitch) {
            const __m256i t0 = inside ? _mm256_loadu_si256((const __m256i *)rp) : hs_load32(rp, end);
            const __m256i t1 =
                inside ? _mm256_loadu_si256((const __m256i *)(rp + 32)) : hs_load32(rp + 32, end);
            const __m256i left = _mm256_permutex2var_epi8(t0, dx, t1);
            const __m256i right = _mm256_permutex2var_epi8(t0, dx1, t1);
            const __mmask32 top = _mm256_cmpeq_epi8_mask(dy, rv);
            const __mmask32 bottom = _mm256_cmpeq_epi8_mask(dy1, rv);
            rv = _mm256_add_epi8(rv, one);
            tl = _mm256_mask_mov_epi8(tl, top, left);
            tr = _mm256_mask_mov_epi8(tr, top, right);
            bl = _mm256_mask_mov_epi8(bl, bottom, left);
            br = _mm256_mask_mov_epi8(br, bottom, right);
        }
        const __m512i fx = _mm512_slli_epi16(_mm512_and_si512(X, low8), 7);
        const __m512i fy = _mm512_slli_epi16(_mm512_and_si512(Y, low8), 7);
        const __m512i a = _mm512_slli_epi16(_mm512_cvtepu8_epi16(tl), 6);
        const __m512i b = _mm512_slli_epi16(_mm512_cvtepu8_epi16(tr), 6);
        const __m512i c = _mm512_slli_epi16(_mm512_cvtepu8_epi16(bl), 6);
        const __m512i d = _mm512_slli_epi16(_mm512_cvtepu8_epi16(br), 6);
        const __m512i top = _mm512_add_epi16(a, _mm512_mulhrs_epi16(_mm512_sub_epi16(b, a), fx));
        const __m512i bot = _mm512_add_epi16(c, _mm512_mulhrs_epi16(_mm512_sub_epi16(d, c), fx));
        const __m512i mid = _mm512_add_epi16(top, _mm512_mulhrs_epi16(_mm512_sub_epi16(bot, top), fy));
        const __m256i bytes = _mm512_cvtepi16_epi8(_mm512_srli_epi16(_mm512_add_epi16(mid, half), 6));
        if (count == 32)
            _mm256_storeu_si256((__m256i *)(out + u), bytes);
        else
            _mm256_mask_storeu_epi8(out + u, (__mmask32)((1ULL << count) - 1), bytes);
    }
}

/* sums[i] (+)= buf[i·side] + ... + buf[i·side + side - 1], i < n; set if first. A constant side
 * per instance, so the compiler vectorises the loop. */
HS_VBMI static inline __attribute__((always_inline)) void hs_group_sums(
    const uint8_t *buf, int64_t n, int side, int first, uint16_t *sums) {
    for (int64_t i = 0; i < n; i++) {
        uint16_t s = first ? 0 : sums[i];
        for (int k = 0; k < side; k++) s += buf[i * side + k];
        sums[i] = s;
    }
}

/* out[i], i < n: the rounded mean of side × side bilinear samples a pixel, side 2 to 16, (ax, ay)
 * apart in 32.32 (the pixel step / side). Pixel i's sub-row j is side samples from
 * (px + ox[j·side], py + oy[j·side]) + i·side·(ax, ay): each sub-row of all n pixels is one run
 * of n·side samples through hs_bilinear_row into buf (n·side bytes), added up per pixel in sums
 * (n words). Samples are whole grey levels before the mean, as on the Numba path. */
HS_VBMI static void hs_bilinear_mean_row(const uint8_t *src, int64_t size, int64_t pitch,
                                         int64_t px, int64_t py, int64_t ax, int64_t ay,
                                         int64_t n, int64_t side, const int64_t *ox,
                                         const int64_t *oy, uint8_t *buf, uint16_t *sums,
                                         uint8_t *out) {
    for (int64_t j = 0; j < side; j++) {
        hs_bilinear_row(src, size, pitch, px + ox[j * side], py + oy[j * side], ax, ay, n * side,
                        buf);
        switch (side) {
        case 2: hs_group_sums(buf, n, 2, j == 0, sums); break;
        case 3: hs_group_sums(buf, n, 3, j == 0, sums); break;
        case 4: hs_group_sums(buf, n, 4, j == 0, sums); break;
        default: hs_group_sums(buf, n, (int)side, j == 0, sums);
        }
    }
    /* (sum + count/2) / count by a multiply, exact for sums below 2^16. */
    const uint64_t count = (uint64_t)(side * side), half = count / 2;
    const uint64_t magic = ((uint64_t)1 << 32) / count + 1;
    for (int64_t i = 0; i < n; i++) out[i] = (uint8_t)(((sums[i] + half) * magic) >> 32);
}
#else
static void hs_bilinear_row(const uint8_t *src, int64_t size, int64_t pitch, int64_t px,
                            int64_t py, int64_t ax, int64_t ay, int64_t n, uint8_t *out) {
    (void)src, (void)size, (void)pitch, (void)px, (void)py, (void)ax, (void)ay, (void)n,
        (void)out;
}
static void hs_bilinear_mean_row(const uint8_t *src, int64_t size, int64_t pitch, int64_t px,
                                 int64_t py, int64_t ax, int64_t ay, int64_t n, int64_t side,
                                 const int64_t *ox, const int64_t *oy, uint8_t *buf,
                                 uint16_t *sums, uint8_t *out) {
    (void)src, (void)size, (void)pitch, (void)px, (void)py, (void)ax, (void)ay, (void)n,
        (void)side, (void)ox, (void)oy, (void)buf, (void)sums, (void)out;
}
#endif

#endif
