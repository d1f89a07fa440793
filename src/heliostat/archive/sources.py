"""Helioviewer data sources: ids, hierarchy, layering order, archive folders and colour tables.

Ids are Helioviewer's (``datasources`` table of the Helioviewer API), so clients that know
``AIA 171 = 10`` work unchanged. The tree is observatory → instrument → detector → measurement.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DataSource:
    id: int
    observatory: str
    instrument: str
    detector: str
    measurement: str
    name: str  # Helioviewer nickname, e.g. "AIA 171"
    layering_order: int  # 1 = disc imagers, 2-3 = coronagraphs (drawn under the disc)
    folder: str  # first folder of the archive tree, e.g. "AIA", "LASCO-C3"
    color_table: str | None  # name of a table in heliostat.imaging.colortables, None = grey
    description: str

    @property
    def keys(self) -> tuple[str, str, str, str]:
        return (self.observatory, self.instrument, self.detector, self.measurement)

    @property
    def file_suffix(self) -> str:
        """The part of a Helioviewer file name after the time: ``SDO_AIA_AIA_171``."""
        return "_".join(self.keys)


def _src(
    id: int,
    obs: str,
    inst: str,
    det: str,
    meas: str,
    name: str,
    folder: str,
    table: str | None,
    desc: str,
    layer: int = 1,
) -> DataSource:
    return DataSource(id, obs, inst, det, meas, name, layer, folder, table, desc)


def _build() -> tuple[DataSource, ...]:
    out: list[DataSource] = []
    for i, wl in enumerate(("171", "195", "284", "304")):
        out.append(
            _src(i, "SOHO", "EIT", "EIT", wl, f"EIT {wl}", "EIT", f"sohoeit{wl}", f"EIT {wl} Å")
        )
    out.append(
        _src(
            4,
            "SOHO",
            "LASCO",
            "C2",
            "white-light",
            "LASCO C2",
            "LASCO-C2",
            "soholasco2",
            "LASCO C2 white-light coronagraph",
            layer=2,
        )
    )
    out.append(
        _src(
            5,
            "SOHO",
            "LASCO",
            "C3",
            "white-light",
            "LASCO C3",
            "LASCO-C3",
            "soholasco3",
            "LASCO C3 white-light coronagraph",
            layer=3,
        )
    )
    out.append(
        _src(
            6,
            "SOHO",
            "MDI",
            "MDI",
            "magnetogram",
            "MDI Mag",
            "MDI",
            None,
            "MDI line-of-sight magnetogram",
        )
    )
    out.append(
        _src(
            7, "SOHO", "MDI", "MDI", "continuum", "MDI Int", "MDI", None, "MDI continuum intensity"
        )
    )
    for i, wl in enumerate(
        ("94", "131", "171", "193", "211", "304", "335", "1600", "1700", "4500")
    ):
        out.append(
            _src(8 + i, "SDO", "AIA", "AIA", wl, f"AIA {wl}", "AIA", f"sdoaia{wl}", f"AIA {wl} Å")
        )
    out.append(
        _src(
            18, "SDO", "HMI", "HMI", "continuum", "HMI Int", "HMI", None, "HMI continuum intensity"
        )
    )
    out.append(
        _src(
            19,
            "SDO",
            "HMI",
            "HMI",
            "magnetogram",
            "HMI Mag",
            "HMI",
            None,
            "HMI line-of-sight magnetogram",
        )
    )
    for base, craft, tag in ((20, "STEREO_A", "A"), (24, "STEREO_B", "B")):
        for i, wl in enumerate(("171", "195", "284", "304")):
            out.append(
                _src(
                    base + i,
                    craft,
                    "SECCHI",
                    "EUVI",
                    wl,
                    f"EUVI-{tag} {wl}",
                    f"EUVI-{tag}",
                    f"euvi{wl}",
                    f"SECCHI EUVI-{tag} {wl} Å",
                )
            )
    for sid, craft, det, tag, layer in (
        (28, "STEREO_A", "COR1", "A", 2),
        (29, "STEREO_A", "COR2", "A", 3),
        (30, "STEREO_B", "COR1", "B", 2),
        (31, "STEREO_B", "COR2", "B", 3),
    ):
        out.append(
            _src(
                sid,
                craft,
                "SECCHI",
                det,
                "white-light",
                f"{det}-{tag}",
                f"{det}-{tag}",
                f"stereo{det.lower()}",
                f"SECCHI {det}-{tag} white-light coronagraph",
                layer=layer,
            )
        )
    out.append(_src(32, "PROBA2", "SWAP", "SWAP", "174", "SWAP 174", "SWAP", None, "SWAP 174 Å"))
    return tuple(out)


SOURCES: tuple[DataSource, ...] = _build()
_BY_ID = {s.id: s for s in SOURCES}
_BY_KEYS = {tuple(k.lower() for k in s.keys): s for s in SOURCES}


class UnknownSourceError(LookupError):
    """No Helioviewer data source matches; the message names what was looked for."""


def by_id(source_id: int) -> DataSource:
    try:
        return _BY_ID[source_id]
    except KeyError:
        raise UnknownSourceError(f"unknown data source id {source_id}") from None


def by_keys(observatory: str, instrument: str, detector: str, measurement: str) -> DataSource:
    key = (observatory.lower(), instrument.lower(), detector.lower(), measurement.lower())
    try:
        return _BY_KEYS[key]
    except KeyError:
        raise UnknownSourceError(
            f"no data source for observatory={observatory!r} instrument={instrument!r} "
            f"detector={detector!r} measurement={measurement!r}"
        ) from None


def exists(source_id: int) -> bool:
    return source_id in _BY_ID


def tree() -> dict[str, dict[str, dict[str, dict[str, DataSource]]]]:
    """observatory → instrument → detector → measurement → source, in id order."""
    out: dict[str, dict[str, dict[str, dict[str, DataSource]]]] = {}
    for s in SOURCES:
        out.setdefault(s.observatory, {}).setdefault(s.instrument, {}).setdefault(s.detector, {})[
            s.measurement
        ] = s
    return out


def iter_sources() -> Iterator[DataSource]:
    return iter(SOURCES)
