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

__version__ = "0.1.0"
