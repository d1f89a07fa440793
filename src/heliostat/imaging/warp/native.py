"""The C row kernels (ext/simd.pyx) where this CPU has their instructions, and how numba
calls them by address.

hs_bilinear_row and hs_bilinear_mean_row (ext/bilinear_row.h) need AVX-512 VBMI, hs_separable_row
(ext/separable_row.h) AVX-512 BW; each address is 0 where the CPU lacks them, and the Numba paths
run instead. HELIOSTAT_SIMD=0 turns all of them off (the tests compare both paths). Callers read
the addresses as attributes of this module when they run, so a test can swap them.
"""

from __future__ import annotations

import os
from typing import Any

import llvmlite.ir as llvm_ir
from numba.core import cgutils
from numba.core import types as nb_types
from numba.extending import intrinsic

from heliostat.imaging import _simd

_SIMD_ON = os.environ.get("HELIOSTAT_SIMD", "1") != "0"
BILINEAR_ROW = _simd.bilinear_row_address() if _SIMD_ON else 0
BILINEAR_MEAN_ROW = _simd.bilinear_mean_row_address() if _SIMD_ON else 0
SEPARABLE_ROW = _simd.separable_row_address() if _SIMD_ON else 0

# hs_bilinear_row's largest sample step along a row, in pixels.
MAX_STEP = _simd.MAX_STEP
# hs_separable_row's output columns a step, and the line window their taps must fit in.
SEP_LANES = _simd.SEP_LANES
SEP_WINDOW = _simd.SEP_WINDOW


def _call_c_typer(typingctx, fn, args):  # type: ignore[no-untyped-def]
    """fn(*args) for the address ``fn`` of a C function taking int64 and pointer arguments
    (passed as int64 addresses: the same registers in the x86-64 ABI) and returning nothing."""
    if not isinstance(args, nb_types.UniTuple) or args.dtype != nb_types.int64:
        return None
    sig = nb_types.void(fn, args)

    def codegen(context, builder, signature, call_args):  # type: ignore[no-untyped-def]
        fn_, args_ = call_args
        i64 = llvm_ir.IntType(64)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i64] * args.count)
        values = cgutils.unpack_tuple(builder, args_, args.count)  # type: ignore[no-untyped-call]
        builder.call(builder.inttoptr(fn_, fnty.as_pointer()), values)
        return context.get_dummy_value()

    return sig, codegen


call_c: Any = intrinsic(_call_c_typer)
