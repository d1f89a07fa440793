"""Heliostat: a server for solar and space-science JPEG 2000 imagery, with spatial subscriptions."""

import os as _os

# Numba caches compiled kernels beside their source unless told otherwise; an installed package's
# directory may be read-only, so default to a per-user cache that is always writable.
_os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    _os.path.join(
        _os.environ.get("XDG_CACHE_HOME", _os.path.expanduser("~/.cache")), "heliostat", "numba"
    ),
)

# Numba's parallel kernels run on OpenMP. Its default, spinning, makes a thread that finishes its
# rows burn the core a descheduled sibling needs: with the cores shared (request threads, other
# processes) a 4096² warp measured 24–48 ms against 4.6–11 ms with passive waiting. Read by
# libgomp when Numba first loads it, after this import.
_os.environ.setdefault("OMP_WAIT_POLICY", "passive")

__version__ = "0.1.0"
