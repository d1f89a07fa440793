# cython: language_level=3
"""SIMD kernels in C that the Numba kernels call by address (heliostat.imaging.affine).

Numba cannot express a byte permute; these few functions are C with intrinsics, compiled for
their instruction set whatever the build's flags, and offered only when the CPU running them
has it: the ``*_address()`` functions return 0 otherwise and the caller keeps its own path.
"""

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uintptr_t


cdef extern from "bilinear_row.h" nogil:
    int hs_bilinear_row_supported()
    void hs_bilinear_row(const uint8_t *src, int64_t size, int64_t pitch, int64_t px,
                         int64_t py, int64_t ax, int64_t ay, int64_t n, uint8_t *out)
    void hs_bilinear_mean_row(const uint8_t *src, int64_t size, int64_t pitch, int64_t px,
                              int64_t py, int64_t ax, int64_t ay, int64_t n, int64_t side,
                              const int64_t *ox, const int64_t *oy, uint8_t *buf,
                              uint16_t *sums, uint8_t *out)
    double HS_MAX_STEP


cdef extern from "separable_row.h" nogil:
    int hs_separable_row_supported()
    void hs_separable_row(const uint8_t *src, int64_t pitch, int64_t rows, const int16_t *wy,
                          int64_t width, int16_t *line, const uint8_t *pf, int64_t pf_rows,
                          const int32_t *base, const int16_t *idx, const int16_t *wx,
                          int64_t taps, int64_t w_out, uint8_t *out, uint8_t *alpha,
                          const uint8_t *alpha_row, uint8_t *buf)
    int HS_SEP_LANES
    int HS_SEP_WINDOW


def bilinear_row_address() -> int:
    """Address of ``hs_bilinear_row`` (ext/bilinear_row.h) on a CPU with AVX-512 VBMI, else 0."""
    if not hs_bilinear_row_supported():
        return 0
    return <uintptr_t>&hs_bilinear_row


def bilinear_mean_row_address() -> int:
    """Address of ``hs_bilinear_mean_row`` (ext/bilinear_row.h), where ``bilinear_row_address``
    is not 0, else 0."""
    if not hs_bilinear_row_supported():
        return 0
    return <uintptr_t>&hs_bilinear_mean_row


MAX_STEP: float = HS_MAX_STEP


def separable_row_address() -> int:
    """Address of ``hs_separable_row`` (ext/separable_row.h) on a CPU with AVX-512 BW, else 0."""
    if not hs_separable_row_supported():
        return 0
    return <uintptr_t>&hs_separable_row


SEP_LANES: int = HS_SEP_LANES
SEP_WINDOW: int = HS_SEP_WINDOW
