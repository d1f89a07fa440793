"""Type stub for the compiled ext/simd.pyx."""

MAX_STEP: float

def bilinear_row_address() -> int: ...
def bilinear_mean_row_address() -> int: ...

SEP_LANES: int
SEP_WINDOW: int

def separable_row_address() -> int: ...
