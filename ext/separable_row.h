/* One output row of a rotation-free warp (a scale, shift or mirror per axis), 16-bit lanes with
 * AVX-512 BW.
 *
 * Vertical pass: the source rows a row's taps cover, weighted into one 16-bit line at 1/64 grey
 * level (vpmulhrsw rounds each product), 32 pixels a step. Horizontal pass: 32 output pixels a
 * step from a 64-word window of that line (two loads), their taps picked by word permutes
 * (vpermi2w) whatever the columns' pattern (consecutive, every 1.9 px, or mirrored), weighted
 * the same way. Weights are 1/16384 fixed point; all products and sums stay within 1/20 of a
 * grey level of the float ones, so results are within one grey level of the exact mean of the
 * bilinear samples.
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
 * rows) are prefetched: a row is a 4 KiB page at 4096², where the hardware prefetcher starts
 * over. Inlined with a constant ``rows`` for 1 to 3 rows (every 1× or 2× supersampled axis up to
 * a step of 2), so the rows' weights stay in registers. */
HS_BW static inline __attribute__((always_inline)) void hs_vertical(
    const uint8_t *src, int64_t pitch, int64_t rows, const int16_t *wy, int64_t width,
    int16_t *line, const uint8_t *pf, int64_t pf_rows) {
    __m512i w[3];
    for (int64_t r = 0; r < rows && r < 3; r++) w[r] = _mm512_set1_epi16(wy[r]);
    for (int64_t x = 0; x < width; x += 32) {
        if ((x & 63) == 0)
            for (int64_t r = 0; r < pf_rows; r++)
                _mm_prefetch((const char *)(pf + r * pitch + x), _MM_HINT_T0);
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

/* out[u], u < w_out: sum over k < taps of wx[c][k][lane] * line[base[c] + idx[c][lane] + k],
 * c = u / 32, lane = u % 32, at 1/16384, rounded to a byte; base[c] is (window start, 1 if the
 * run's idx is 0, 1, 2, ... else 0). Such runs read their taps as plain loads, the others
 * permute them out of a 64-word window (every idx + taps - 1 < 64). line holds 64 words from
 * every base. Inlined with a constant ``taps`` for 2 and 3. */
HS_BW static inline __attribute__((always_inline)) void hs_horizontal(
    const int16_t *line, const int32_t *base, const int16_t *idx, const int16_t *wx,
    int64_t taps, int64_t w_out, uint8_t *out) {
    const __m512i one = _mm512_set1_epi16(1), half = _mm512_set1_epi16(32);
    for (int64_t u = 0, c = 0; u < w_out; u += HS_SEP_LANES, c++) {
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

/* One output row: the vertical pass of ``rows`` source rows from src (width bytes each, pitch
 * apart, weights wy) into line, prefetching pf_rows rows from pf, then the horizontal pass into
 * out. line holds 64 words past the largest base and past width rounded up to 32, zero beyond
 * what the vertical pass writes. */
/* dst[0, n) = src[0, n), past an aligned head with non-temporal stores if ``stream``. */
HS_BW static inline void hs_copy(uint8_t *dst, const uint8_t *src, int64_t n, int stream) {
    int64_t i = 0;
    if (stream) {
        const int64_t head = (64 - ((uintptr_t)dst & 63)) & 63;
        i = head < n ? head : n;
        const __mmask64 m = (__mmask64)((1ULL << i) - 1);
        _mm512_mask_storeu_epi8(dst, m, _mm512_maskz_loadu_epi8(m, src));
        for (; i + 64 <= n; i += 64)
            _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
    } else {
        for (; i + 64 <= n; i += 64)
            _mm512_storeu_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
    }
    const __mmask64 m = (__mmask64)((1ULL << (n - i)) - 1);
    _mm512_mask_storeu_epi8(dst + i, m, _mm512_maskz_loadu_epi8(m, src + i));
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
    uint8_t *dst = buf ? buf : out;
    switch (taps) {
    case 2: hs_horizontal(line, base, idx, wx, 2, w_out, dst); break;
    case 3: hs_horizontal(line, base, idx, wx, 3, w_out, dst); break;
    default: hs_horizontal(line, base, idx, wx, taps, w_out, dst);
    }
    if (buf) hs_copy(out, buf, w_out, 1);
    hs_copy(alpha, alpha_row, w_out, buf != 0);
    /* Non-temporal stores are weakly ordered: drain them before the row is reported done. */
    if (buf) _mm_sfence();
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
