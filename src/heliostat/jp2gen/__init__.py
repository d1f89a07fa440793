"""JP2Gen: convert FITS solar images into Helioviewer JPEG 2000 files in the archive."""

from heliostat.jp2gen.batch import BatchReport, Failure, convert_many, iter_fits
from heliostat.jp2gen.convert import ConvertResult, JP2GenError, convert, output_is_valid
from heliostat.jp2gen.scaling import Scaling, choose

__all__ = [
    "BatchReport",
    "ConvertResult",
    "Failure",
    "JP2GenError",
    "Scaling",
    "choose",
    "convert",
    "convert_many",
    "iter_fits",
    "output_is_valid",
]
