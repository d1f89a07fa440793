"""Type stub for the compiled ext/simd.pyx."""

MAX_STEP: float

def bilinear_row_address() -> int: ...
