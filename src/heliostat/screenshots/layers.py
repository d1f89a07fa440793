"""Helioviewer layer strings: which data sources a screenshot or movie shows, and how.

A layer string is comma-joined bracket groups, one per layer, in drawing order:

* ``[sourceId,visible,opacity]`` — ``[10,1,100]``;
* ``[observatory,instrument,detector,measurement,visible,opacity]`` — ``[SDO,AIA,AIA,171,1,100]``;
* ``[observatory,instrument,measurement,visible,opacity]`` where the detector repeats the
  instrument — ``[SDO,AIA,171,1,100]``;
* either named form extended to ``[…,visible,opacity,difference,diffCount,diffTime,
  baseDiffTime]`` (difference 0 none, 1 running, 2 base; diffTime Helioviewer's unit code;
  baseDiffTime an ISO date), checked as heliostat.imaging.difference.options checks them.

``visible`` is really a layering order, > 0 = shown. Groups with visible 0 or opacity 0 are
dropped. Errors are InvalidArgument on field "layers" naming the group at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from heliostat.archive import sources, times
from heliostat.errors import InvalidArgument
from heliostat.imaging.difference import BASE, MAX_COUNT, UNITS, Difference, options

MAX_LAYERS = 8

_CHARSET = re.compile(r"^[_\w\[\],\-:\.\+ ]+$", re.ASCII)
_GROUP = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"^[+-]?\d{1,9}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z?$")


@dataclass(frozen=True, slots=True)
class LayerSpec:
    source: sources.DataSource
    visible: int  # layering order, > 0
    opacity: int  # 1..100
    difference: int = 0  # 0 none, 1 running, 2 base
    diff_count: int = 0
    diff_time: int = 0  # Helioviewer's unit code for diff_count
    base_diff_time: str = ""  # ISO date, for base differences
    diff: Difference | None = None  # the options above, checked; None: no difference


def _int(group: str, name: str, text: str, lo: int, hi: int) -> int:
    if not _INT.match(text) or not lo <= int(text) <= hi:
        message = f"layer {group}: {name} must be an integer {lo}-{hi}, not {text!r}"
        raise InvalidArgument(message, field="layers")
    return int(text)


def _shape_error(group: str) -> InvalidArgument:
    return InvalidArgument(
        f"layer {group}: expected [sourceId,visible,opacity] or "
        "[observatory,instrument,(detector,)measurement,visible,opacity(,difference options)]",
        field="layers",
    )


def _source(group: str, names: list[str]) -> sources.DataSource:
    try:
        if len(names) == 1:
            return sources.by_id(_int(group, "source id", names[0], 0, 2**31 - 1))
        if len(names) == 3:
            obs, inst, meas = names
            return sources.by_keys(obs, inst, inst, meas)
        if len(names) == 4:
            return sources.by_keys(*names)
    except sources.UnknownSourceError as e:
        raise InvalidArgument(f"layer {group}: {e}", field="layers") from None
    raise _shape_error(group)


def _layer(body: str) -> LayerSpec:
    group = f"[{body}]"
    parts = [p.strip() for p in body.split(",")]
    diff: tuple[int, int, int, str] = (0, 0, 0, "")
    if len(parts) >= 8:
        d, count, unit, base = parts[-4:]
        if base and not _DATE.match(base):
            message = f"layer {group}: baseDiffTime {base!r} is not an ISO date"
            raise InvalidArgument(message, field="layers")
        diff = (
            _int(group, "difference", d, 0, 2),
            _int(group, "diffCount", count, 0, MAX_COUNT),
            _int(group, "diffTime", unit, 0, len(UNITS) - 1),
            base,
        )
        parts = parts[:-4]
        if len(parts) < 5:
            raise _shape_error(group)
    if len(parts) < 3:
        raise _shape_error(group)
    source = _source(group, parts[:-2])
    visible = _int(group, "visible", parts[-2], 0, 2**31 - 1)
    opacity = _int(group, "opacity", parts[-1], 0, 100)
    return LayerSpec(source, visible, opacity, *diff, _options(group, *diff))


_NAMES = {"difference": "difference", "diff_count": "diffCount", "diff_time": "diffTime"}


def _options(group: str, mode: int, count: int, unit: int, base: str) -> Difference | None:
    try:
        base_us = times.parse(base) if base and mode == BASE else None
        return options(mode, count, unit, base_us)
    except ValueError as e:  # an impossible date such as 2024-02-30
        raise InvalidArgument(f"layer {group}: baseDiffTime: {e}", field="layers") from None
    except InvalidArgument as e:
        name = _NAMES.get(e.field or "", "baseDiffTime")
        raise InvalidArgument(f"layer {group}: {name}: {e.message}", field="layers") from None


def parse_layers(text: str, *, max_layers: int = MAX_LAYERS) -> tuple[LayerSpec, ...]:
    """The visible layers of a layer string, in drawing order (may be empty)."""
    # Undo the double encoding Apache applies to brackets in some deployments.
    text = re.sub("%5b", "[", re.sub("%5d", "]", text, flags=re.I), flags=re.I)
    if not _CHARSET.match(text):
        raise InvalidArgument(
            "only letters, digits, spaces and _ [ ] , - : . + are allowed", field="layers"
        )
    groups = _GROUP.findall(text)
    # What is left once the groups are cut out must be the commas between them.
    if _GROUP.sub("", text).replace(" ", "") != "," * (len(groups) - 1) or not groups:
        raise InvalidArgument(f"{text!r} is not comma-joined [..] groups", field="layers")
    if len(groups) > max_layers:
        message = f"{len(groups)} layers; at most {max_layers} are allowed"
        raise InvalidArgument(message, field="layers")
    layers = (_layer(body) for body in groups)
    return tuple(la for la in layers if la.visible > 0 and la.opacity > 0)
