/* One output row of a rotation-free warp (a scale, shift or mirror per axis), 16-bit lanes with
 * AVX-512 BW.
 *
 * Vertical pass: the source rows a row's taps cover, weighted into one 16-bit line at 1/128 grey
 * level (vpmulhrsw rounds each product), 32 pixels a step. Horizontal pass: 32 output pixels a
 * step, their taps read as plain loads where they are consecutive (a native-scale run) and
 * otherwise picked by word permutes (vpermi2w) from a 64-word window of the line, whatever the
 * columns' pattern (every 1.9 px, or mirrored); weighted the same way. Weights are 1/16384 fixed
 * point; the products and sums stay within 1/20 of a grey level of the float ones, so results
 * are within one grey level of the exact mean of the bilinear samples (the float32 Numba path
 * rounds the same sums). Twice the lanes of float32 and no gathers: 1.1x faster than that path
 * at native scale (both near memory speed there), 2x at 1.0088, 3x at 1.9.
 */
#ifndef HELIOSTAT_SEPARABLE_ROW_H
#define HELIOSTAT_SEPARABLE_ROW_H

#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HS_HAVE_BW 1
#define HS_BW __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

/* Output pixels per horizontal step, and the words of line window their taps must fit in. */
#define HS_SEP_LANES 32
#define HS_SEP_WINDOW 64

static int hs_separable_row_supported(void) {
#ifdef HS_HAVE_BW
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

#ifdef HS_HAVE_BW
/* line[x] = sum over r < rows of wy[r] * src[r * pitch + x] * 128 / 16384, x < width, rounded
 * per product; then zeros up to the next multiple of 32. No source byte past a row's width is
 * read (masked loads). Meanwhile the pf_rows rows from pf (the next output row's new source
 * rows) are prefetched into L2 (10% faster than without; into L1 fills its miss queue): a row
 * is a 4 KiB page at 4096², where the hardware prefetcher starts over. Inlined with a constant
 * ``rows`` for 1 to 3 rows (every 1× or 2× supersampled axis up to a step of 2), so the rows'
 * weights stay in registers. */
HS_BW static inline __attribute__((always_inline)) void hs_vertical(
    const uint8_t *src, int64_t pitch, int64_t rows, const int16_t *wy, int64_t width,
    int16_t *line, const uint8_t *pf, int64_t pf_rows) {
    __m512i w[3];
    for (int64_t r = 0; r < rows && r < 3; r++) w[r] = _mm512_set1_epi16(wy[r]);
    for (int64_t x = 0; x < width; x += 32) {
        if ((x & 63) == 0)
            for (int64_t r = 0; r < pf_rows; r++)
                _mm_prefetch((const char *)(pf + r * pitch + x), _MM_HINT_T1);
        const __mmask32 m = width - x >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (width - x)) - 1);
        __m512i acc = _mm512_setzero_si512();
        const uint8_t *p = src + x;
        for (int64_t r = 0; r < rows; r++, p += pitch) {
            const __m512i v =
                _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, p)), 7);
            const __m512i wr = r < 3 ? w[r] : _mm512_set1_epi16(wy[r]);
            acc = _mm512_add_epi16(acc, _mm512_mulhrs_epi16(v, wr));
        }
        /* At 1/128 grey the line meets the weights' 1/16384 in vpmulhrsw at 1/64. */
        _mm512_storeu_si512((void *)(line + x), _mm512_slli_epi16(acc, 1));
    }
}

/* out[u] for u0 <= u < min(u1, w_out), u0 a multiple of 32: the sum over k < taps of
 * wx[c][k][lane] * line[base[c] + idx[c][lane] + k], c = u / 32, lane = u % 32, at 1/16384,
 * rounded to a byte; base[c] is (window start, 1 if the run's idx is 0, 1, 2, ... else 0). Such
 * runs read their taps as plain loads, the others permute them out of a 64-word window (every
 * idx + taps - 1 < 64). line holds 64 words from every base. Inlined with a constant ``taps``
 * for 1 to 3. */
HS_BW static inline __attribute__((always_inline)) void hs_horizontal(
    const int16_t *line, const int32_t *base, const int16_t *idx, const int16_t *wx,
    int64_t taps, int64_t u0, int64_t u1, int64_t w_out, uint8_t *out) {
    const __m512i one = _mm512_set1_epi16(1), half = _mm512_set1_epi16(32);
    if (u1 > w_out) u1 = w_out;
    for (int64_t u = u0, c = u0 / HS_SEP_LANES; u < u1; u += HS_SEP_LANES, c++) {
        const int16_t *t = line + base[2 * c];
        const int16_t *w = wx + c * taps * HS_SEP_LANES;
        __m512i acc = half;
        if (base[2 * c + 1]) {
            for (int64_t k = 0; k < taps; k++, w += HS_SEP_LANES)
                acc = _mm512_add_epi16(
                    acc, _mm512_mulhrs_epi16(_mm512_loadu_si512((const void *)(t + k)),
                                             _mm512_loadu_si512((const void *)w)));
        } else {
            const __m512i t0 = _mm512_loadu_si512((const void *)t);
            const __m512i t1 = _mm512_loadu_si512((const void *)(t + 32));
            __m512i i = _mm512_loadu_si512((const void *)(idx + u));
            for (int64_t k = 0; k < taps; k++, w += HS_SEP_LANES) {
                acc = _mm512_add_epi16(
                    acc, _mm512_mulhrs_epi16(_mm512_permutex2var_epi16(t0, i, t1),
                                             _mm512_loadu_si512((const void *)w)));
                i = _mm512_add_epi16(i, one);
            }
        }
        const __m256i bytes = _mm512_cvtusepi16_epi8(_mm512_srai_epi16(acc, 6));
        if (w_out - u >= HS_SEP_LANES)
            _mm256_storeu_si256((__m256i *)(out + u), bytes);
        else
            _mm256_mask_storeu_epi8(out + u, (__mmask32)((1u << (w_out - u)) - 1), bytes);
    }
}

/* Output columns between the non-temporal stores of a streamed row: its stores then come
 * spread among the arithmetic instead of in a burst at the end that stalls it. */
#define HS_SEP_SEGMENT 256

/* dst[i, j) = src[i, j), dst + i 64-byte aligned, j - i a multiple of 64: non-temporal. */
HS_BW static inline void hs_stream(uint8_t *dst, const uint8_t *src, int64_t i, int64_t j) {
    for (; i < j; i += 64)
        _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
}

/* dst[i, j) = src[i, j), j - i < 64 (masked). */
HS_BW static inline void hs_copy_short(uint8_t *dst, const uint8_t *src, int64_t i, int64_t j) {
    const __mmask64 m = (__mmask64)((1ULL << (j - i)) - 1);
    _mm512_mask_storeu_epi8(dst + i, m, _mm512_maskz_loadu_epi8(m, src + i));
}

HS_BW static inline __attribute__((always_inline)) void hs_horizontal_taps(
    const int16_t *line, const int32_t *base, const int16_t *idx, const int16_t *wx,
    int64_t taps, int64_t u0, int64_t u1, int64_t w_out, uint8_t *out) {
    switch (taps) {
    case 1: hs_horizontal(line, base, idx, wx, 1, u0, u1, w_out, out); break;
    case 2: hs_horizontal(line, base, idx, wx, 2, u0, u1, w_out, out); break;
    case 3: hs_horizontal(line, base, idx, wx, 3, u0, u1, w_out, out); break;
    default: hs_horizontal(line, base, idx, wx, taps, u0, u1, w_out, out);
    }
}

/* One output row: the vertical pass of ``rows`` source rows from src (width bytes each, pitch
 * apart, weights wy) into line, prefetching pf_rows rows from pf, then the horizontal pass into
 * out, and alpha_row copied to alpha. line holds 64 words past the largest base and past width
 * rounded up to 32, zero beyond what the vertical pass writes. With a buffer ``buf`` of w_out
 * bytes (else NULL) both rows go out by non-temporal stores, through buf for the output row: a
 * frame larger than the caches then costs no reads of the lines it overwrites and does not
 * evict the source. */
HS_BW static void hs_separable_row(const uint8_t *src, int64_t pitch, int64_t rows,
                                   const int16_t *wy, int64_t width, int16_t *line,
                                   const uint8_t *pf, int64_t pf_rows, const int32_t *base,
                                   const int16_t *idx, const int16_t *wx, int64_t taps,
                                   int64_t w_out, uint8_t *out, uint8_t *alpha,
                                   const uint8_t *alpha_row, uint8_t *buf) {
    switch (rows) {
    case 1: hs_vertical(src, pitch, 1, wy, width, line, pf, pf_rows); break;
    case 2: hs_vertical(src, pitch, 2, wy, width, line, pf, pf_rows); break;
    case 3: hs_vertical(src, pitch, 3, wy, width, line, pf, pf_rows); break;
    default: hs_vertical(src, pitch, rows, wy, width, line, pf, pf_rows);
    }
    if (!buf) {
        hs_horizontal_taps(line, base, idx, wx, taps, 0, w_out, w_out, out);
        int64_t i = 0;
        for (; i + 64 <= w_out; i += 64)
            _mm512_storeu_si512((void *)(alpha + i),
                                _mm512_loadu_si512((const void *)(alpha_row + i)));
        hs_copy_short(alpha, alpha_row, i, w_out);
        return;
    }
    /* out and alpha share their alignment (rows of one width from 64-byte aligned arrays) or
     * not: each gets its own head. */
    const int64_t head_o = (int64_t)((64 - ((uintptr_t)out & 63)) & 63);
    const int64_t head_a = (int64_t)((64 - ((uintptr_t)alpha & 63)) & 63);
    int64_t done_o = head_o < w_out ? head_o : w_out, done_a = head_a < w_out ? head_a : w_out;
    hs_copy_short(alpha, alpha_row, 0, done_a);
    for (int64_t u = 0; u < w_out; u += HS_SEP_SEGMENT) {
        const int64_t e = u + HS_SEP_SEGMENT < w_out ? u + HS_SEP_SEGMENT : w_out;
        hs_horizontal_taps(line, base, idx, wx, taps, u, e, w_out, buf);
        if (u == 0) hs_copy_short(out, buf, 0, done_o);
        const int64_t to_o = e < done_o ? done_o : done_o + ((e - done_o) & ~(int64_t)63);
        const int64_t to_a = e < done_a ? done_a : done_a + ((e - done_a) & ~(int64_t)63);
        hs_stream(out, buf, done_o, to_o);
        hs_stream(alpha, alpha_row, done_a, to_a);
        done_o = to_o;
        done_a = to_a;
    }
    hs_copy_short(out, buf, done_o, w_out);
    hs_copy_short(alpha, alpha_row, done_a, w_out);
    /* Non-temporal stores are weakly ordered: drain them before the row is reported done. */
    _mm_sfence();
}
#else
static void hs_separable_row(const uint8_t *src, int64_t pitch, int64_t rows, const int16_t *wy,
                             int64_t width, int16_t *line, const uint8_t *pf, int64_t pf_rows,
                             const int32_t *base, const int16_t *idx, const int16_t *wx,
                             int64_t taps, int64_t w_out, uint8_t *out, uint8_t *alpha,
                             const uint8_t *alpha_row, uint8_t *buf) {
    (void)src, (void)pitch, (void)rows, (void)wy, (void)width, (void)line, (void)pf,
        (void)pf_rows, (void)base, (void)idx, (void)wx, (void)taps, (void)w_out, (void)out,
        (void)alpha, (void)alpha_row, (void)buf;
}
#endif

#endif
