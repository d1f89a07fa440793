# cython: language_level=3
"""Region and resolution decoding of JPEG 2000 codestreams over libopenjp2.

One ``J2KDecoder`` owns one OpenJPEG codec reading from an in-memory copy of the file. For
single-tile images OpenJPEG allows repeated ``opj_set_decode_area`` + ``opj_decode`` calls on the
same codec, which skips re-parsing the headers and reuses the codec's state: callers keep one
decoder per (file, reduce level) and use it for many regions. A decoder is not thread-safe; all
OpenJPEG work runs with the GIL released.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, strncpy

import numpy as np

cimport numpy as cnp

cnp.import_array()


cdef extern from "openjpeg.h" nogil:
    ctypedef int OPJ_BOOL
    ctypedef int32_t OPJ_INT32
    ctypedef uint32_t OPJ_UINT32
    ctypedef uint64_t OPJ_UINT64
    ctypedef int64_t OPJ_OFF_T
    ctypedef size_t OPJ_SIZE_T

    ctypedef enum OPJ_CODEC_FORMAT:
        OPJ_CODEC_J2K
        OPJ_CODEC_JP2

    ctypedef struct opj_dparameters_t:
        OPJ_UINT32 cp_reduce
        OPJ_UINT32 cp_layer
        unsigned int flags

    enum: OPJ_DPARAMETERS_IGNORE_PCLR_CMAP_CDEF_FLAG

    ctypedef struct opj_image_comp_t:
        OPJ_UINT32 dx
        OPJ_UINT32 dy
        OPJ_UINT32 w
        OPJ_UINT32 h
        OPJ_UINT32 x0
        OPJ_UINT32 y0
        OPJ_UINT32 prec
        OPJ_UINT32 sgnd
        OPJ_UINT32 resno_decoded
        OPJ_UINT32 factor
        OPJ_INT32 *data

    ctypedef struct opj_image_t:
        OPJ_UINT32 x0
        OPJ_UINT32 y0
        OPJ_UINT32 x1
        OPJ_UINT32 y1
        OPJ_UINT32 numcomps
        opj_image_comp_t *comps

    ctypedef struct opj_tccp_info_t:
        OPJ_UINT32 numresolutions
        OPJ_UINT32 qmfbid
        OPJ_UINT32 cblkw
        OPJ_UINT32 cblkh

    ctypedef struct opj_tile_info_v2_t:
        int prg
        OPJ_UINT32 numlayers
        opj_tccp_info_t *tccp_info

    ctypedef struct opj_codestream_info_v2_t:
        OPJ_UINT32 tdx
        OPJ_UINT32 tdy
        OPJ_UINT32 tw
        OPJ_UINT32 th
        OPJ_UINT32 nbcomps
        opj_tile_info_v2_t m_default_tile_info

    ctypedef void opj_codec_t
    ctypedef void opj_stream_t
    ctypedef void (*opj_msg_callback)(const char *msg, void *client_data) noexcept nogil
    ctypedef OPJ_SIZE_T (*opj_stream_read_fn)(void *p_buffer, OPJ_SIZE_T p_nb_bytes, void *p_user_data) noexcept nogil
    ctypedef OPJ_OFF_T (*opj_stream_skip_fn)(OPJ_OFF_T p_nb_bytes, void *p_user_data) noexcept nogil
    ctypedef OPJ_BOOL (*opj_stream_seek_fn)(OPJ_OFF_T p_nb_bytes, void *p_user_data) noexcept nogil
    ctypedef void (*opj_stream_free_user_data_fn)(void *p_user_data) noexcept nogil

    opj_codec_t *opj_create_decompress(OPJ_CODEC_FORMAT format)
    void opj_destroy_codec(opj_codec_t *p_codec)
    void opj_set_default_decoder_parameters(opj_dparameters_t *parameters)
    OPJ_BOOL opj_setup_decoder(opj_codec_t *p_codec, opj_dparameters_t *parameters)
    OPJ_BOOL opj_codec_set_threads(opj_codec_t *p_codec, int num_threads)
    OPJ_BOOL opj_decoder_set_strict_mode(opj_codec_t *p_codec, OPJ_BOOL strict)
    OPJ_BOOL opj_set_error_handler(opj_codec_t *p_codec, opj_msg_callback p_callback, void *p_user_data)
    OPJ_BOOL opj_set_warning_handler(opj_codec_t *p_codec, opj_msg_callback p_callback, void *p_user_data)
    OPJ_BOOL opj_set_info_handler(opj_codec_t *p_codec, opj_msg_callback p_callback, void *p_user_data)
    OPJ_BOOL opj_read_header(opj_stream_t *p_stream, opj_codec_t *p_codec, opj_image_t **p_image)
    OPJ_BOOL opj_set_decode_area(opj_codec_t *p_codec, opj_image_t *p_image, OPJ_INT32 p_start_x,
                                 OPJ_INT32 p_start_y, OPJ_INT32 p_end_x, OPJ_INT32 p_end_y)
    OPJ_BOOL opj_decode(opj_codec_t *p_decompressor, opj_stream_t *p_stream, opj_image_t *p_image)
    void opj_image_destroy(opj_image_t *image)
    opj_codestream_info_v2_t *opj_get_cstr_info(opj_codec_t *p_codec)
    void opj_destroy_cstr_info(opj_codestream_info_v2_t **cstr_info)

    opj_stream_t *opj_stream_create(OPJ_SIZE_T p_buffer_size, OPJ_BOOL p_is_input)
    void opj_stream_destroy(opj_stream_t *p_stream)
    void opj_stream_set_read_function(opj_stream_t *p_stream, opj_stream_read_fn p_function)
    void opj_stream_set_skip_function(opj_stream_t *p_stream, opj_stream_skip_fn p_function)
    void opj_stream_set_seek_function(opj_stream_t *p_stream, opj_stream_seek_fn p_function)
    void opj_stream_set_user_data(opj_stream_t *p_stream, void *p_data, opj_stream_free_user_data_fn p_function)
    void opj_stream_set_user_data_length(opj_stream_t *p_stream, OPJ_UINT64 data_length)
    const char *opj_version()


cdef struct MemSource:
    const uint8_t *data
    OPJ_OFF_T size
    OPJ_OFF_T pos
    char error[512]


cdef OPJ_SIZE_T _read(void *buf, OPJ_SIZE_T n, void *user) noexcept nogil:
    cdef MemSource *src = <MemSource *>user
    cdef OPJ_OFF_T left = src.size - src.pos
    if left <= 0:
        return <OPJ_SIZE_T>-1
    if <OPJ_OFF_T>n > left:
        n = <OPJ_SIZE_T>left
    memcpy(buf, src.data + src.pos, n)
    src.pos += n
    return n


cdef OPJ_OFF_T _skip(OPJ_OFF_T n, void *user) noexcept nogil:
    cdef MemSource *src = <MemSource *>user
    cdef OPJ_OFF_T target = src.pos + n
    if target < 0:
        return -1
    if target > src.size:
        target = src.size
    n = target - src.pos
    src.pos = target
    return n


cdef OPJ_BOOL _seek(OPJ_OFF_T n, void *user) noexcept nogil:
    cdef MemSource *src = <MemSource *>user
    if n < 0 or n > src.size:
        return 0
    src.pos = n
    return 1


cdef void _on_error(const char *msg, void *user) noexcept nogil:
    cdef MemSource *src = <MemSource *>user
    # Keep the first error: later ones are usually consequences of it.
    if src.error[0] == 0:
        strncpy(src.error, msg, 511)
        src.error[511] = 0


cdef void _on_quiet(const char *msg, void *user) noexcept nogil:
    pass


class DecodeError(ValueError):
    """The codestream could not be decoded; the message says why."""


def openjpeg_version() -> str:
    return opj_version().decode()


cdef class J2KDecoder:
    """An open OpenJPEG codec over one JP2/J2K file held in memory, at one reduce level.

    ``data`` is the whole file (JP2 or raw J2K codestream). ``reduce`` discards that many
    resolution levels; ``layers`` limits the quality layers decoded (0 = all); ``threads`` is
    OpenJPEG's own thread count for this codec.
    """

    cdef opj_codec_t *codec
    cdef opj_stream_t *stream
    cdef opj_image_t *image
    cdef MemSource src
    cdef object _data
    cdef readonly int reduce
    cdef readonly int layers
    cdef readonly int width
    cdef readonly int height
    cdef readonly int x0
    cdef readonly int y0
    cdef readonly int num_components
    cdef readonly int precision
    cdef readonly bint signed
    cdef readonly int num_resolutions
    cdef readonly int num_quality_layers
    cdef readonly int tiles_x
    cdef readonly int tiles_y
    cdef readonly bint reversible
    cdef readonly int progression
    cdef readonly int code_block_width
    cdef readonly int code_block_height
    cdef bint broken

    def __cinit__(self, data, int reduce=0, int layers=0, int threads=1):
        cdef const uint8_t[::1] view = memoryview(data).cast("B")
        cdef opj_dparameters_t params
        cdef OPJ_CODEC_FORMAT fmt
        cdef OPJ_BOOL ok
        cdef opj_codestream_info_v2_t *info
        self.codec = NULL
        self.stream = NULL
        self.image = NULL
        self._data = data
        self.broken = False
        if reduce < 0 or layers < 0 or threads < 1:
            raise ValueError("reduce and layers must be >= 0 and threads >= 1")
        if view.shape[0] < 12:
            raise DecodeError("file too short to be JPEG 2000")
        if view[0] == 0 and view[1] == 0 and view[2] == 0 and view[3] == 12 and view[4] == 0x6A and view[5] == 0x50:
            fmt = OPJ_CODEC_JP2
        elif view[0] == 0xFF and view[1] == 0x4F and view[2] == 0xFF and view[3] == 0x51:
            fmt = OPJ_CODEC_J2K
        else:
            raise DecodeError("not a JPEG 2000 file (no JP2 signature or SOC marker)")

        self.src.data = &view[0]
        self.src.size = view.shape[0]
        self.src.pos = 0
        self.src.error[0] = 0
        self.reduce = reduce
        self.layers = layers

        self.codec = opj_create_decompress(fmt)
        if self.codec == NULL:
            raise MemoryError("opj_create_decompress failed")
        opj_set_error_handler(self.codec, _on_error, &self.src)
        opj_set_warning_handler(self.codec, _on_quiet, NULL)
        opj_set_info_handler(self.codec, _on_quiet, NULL)
        opj_set_default_decoder_parameters(&params)
        params.cp_reduce = reduce
        params.cp_layer = layers
        # Keep palette indices as they are (SWAP files carry a pclr box): the colour table is
        # applied later, and a palette-expanded image cannot be region-decoded again.
        params.flags |= OPJ_DPARAMETERS_IGNORE_PCLR_CMAP_CDEF_FLAG
        if not opj_setup_decoder(self.codec, &params):
            raise DecodeError(self._message("decoder setup failed"))
        # Strict mode makes a truncated codestream an error instead of silently partial pixels.
        opj_decoder_set_strict_mode(self.codec, 1)
        if threads > 1:
            opj_codec_set_threads(self.codec, threads)

        self.stream = opj_stream_create(1 << 16, 1)
        if self.stream == NULL:
            raise MemoryError("opj_stream_create failed")
        opj_stream_set_read_function(self.stream, _read)
        opj_stream_set_skip_function(self.stream, _skip)
        opj_stream_set_seek_function(self.stream, _seek)
        opj_stream_set_user_data(self.stream, &self.src, NULL)
        opj_stream_set_user_data_length(self.stream, <OPJ_UINT64>self.src.size)

        with nogil:
            ok = opj_read_header(self.stream, self.codec, &self.image)
        if not ok or self.image == NULL:
            raise DecodeError(self._message("cannot read the JPEG 2000 header"))
        if self.image.numcomps < 1:
            raise DecodeError("codestream has no components")

        self.x0 = self.image.x0
        self.y0 = self.image.y0
        self.width = self.image.x1 - self.image.x0
        self.height = self.image.y1 - self.image.y0
        self.num_components = self.image.numcomps
        self.precision = self.image.comps[0].prec
        self.signed = self.image.comps[0].sgnd != 0
        info = opj_get_cstr_info(self.codec)
        if info == NULL:
            raise DecodeError("cannot read codestream parameters")
        self.num_resolutions = info.m_default_tile_info.tccp_info[0].numresolutions
        self.num_quality_layers = info.m_default_tile_info.numlayers
        self.tiles_x = info.tw
        self.tiles_y = info.th
        self.reversible = info.m_default_tile_info.tccp_info[0].qmfbid == 1
        self.progression = info.m_default_tile_info.prg
        self.code_block_width = 1 << info.m_default_tile_info.tccp_info[0].cblkw
        self.code_block_height = 1 << info.m_default_tile_info.tccp_info[0].cblkh
        opj_destroy_cstr_info(&info)
        if reduce >= self.num_resolutions:
            raise DecodeError(
                f"reduce {reduce} is not below the number of resolutions ({self.num_resolutions})"
            )
        if self.precision < 1 or self.precision > 16:
            raise DecodeError(f"unsupported sample precision {self.precision}")

    def __dealloc__(self):
        if self.image != NULL:
            opj_image_destroy(self.image)
        if self.stream != NULL:
            opj_stream_destroy(self.stream)
        if self.codec != NULL:
            opj_destroy_codec(self.codec)

    def _message(self, default):
        msg = self.src.error.decode("utf-8", "replace").strip()
        self.src.error[0] = 0
        return msg or default

    def output_shape(self, int x0, int y0, int x1, int y1):
        """(rows, cols) that ``decode`` returns for a region given in full-resolution pixels."""
        cdef int f = 1 << self.reduce
        return ((y1 + f - 1) // f - (y0 + f - 1) // f, (x1 + f - 1) // f - (x0 + f - 1) // f)

    def decode(self, int x0, int y0, int x1, int y1, cnp.ndarray out=None):
        """Decode component 0 of the region [x0, x1) x [y0, y1) (full-resolution pixels, origin
        at the image's top-left) at this decoder's reduce level, as 8-bit samples.

        Samples of more than 8 bits are shifted down to 8; signed samples are offset to unsigned.
        ``out`` may be a C-contiguous uint8 array of the output shape, filled in place.
        """
        cdef OPJ_BOOL ok
        cdef opj_image_comp_t *comp
        cdef int rows, cols, i, j, shift, offset, v
        cdef const OPJ_INT32 *src_row
        cdef uint8_t *dst
        cdef Py_ssize_t stride
        if self.broken:
            raise DecodeError("decoder is unusable after an earlier failure")
        if x0 < 0 or y0 < 0 or x1 > self.width or y1 > self.height or x0 >= x1 or y0 >= y1:
            raise ValueError(
                f"region [{x0}, {x1}) x [{y0}, {y1}) is empty or outside the "
                f"{self.width}x{self.height} image"
            )
        with nogil:
            ok = opj_set_decode_area(
                self.codec, self.image, self.x0 + x0, self.y0 + y0, self.x0 + x1, self.y0 + y1
            )
            if ok:
                ok = opj_decode(self.codec, self.stream, self.image)
        if not ok:
            self.broken = True
            raise DecodeError(self._message("JPEG 2000 decode failed"))
        comp = &self.image.comps[0]
        if comp.data == NULL:
            self.broken = True
            raise DecodeError("decoder returned no samples")
        rows = comp.h
        cols = comp.w
        if out is None:
            out = np.empty((rows, cols), dtype=np.uint8)
        elif (out.dtype != np.uint8 or out.ndim != 2 or out.shape[0] != rows
              or out.shape[1] != cols or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous uint8 array of shape ({rows}, {cols})")
        shift = self.precision - 8 if self.precision > 8 else 0
        offset = (1 << (self.precision - 1)) if self.signed else 0
        dst = <uint8_t *>cnp.PyArray_DATA(out)
        stride = out.strides[0]
        with nogil:
            for i in range(rows):
                src_row = comp.data + <Py_ssize_t>i * cols
                for j in range(cols):
                    v = (src_row[j] + offset) >> shift
                    if v < 0:
                        v = 0
                    elif v > 255:
                        v = 255
                    dst[i * stride + j] = <uint8_t>v
        return out
