"""One canonical orientation for everything a model sees, and the anatomical meaning of its axes.

A scan's array order is an accident of how it was stored: a NIfTI from a converter is often stored RAS, a DICOM
series LPS, a sagittal acquisition with the slices along left-right. A network learns the array's axis order, so
a model trained on one storage order segments another badly. Every image is therefore brought to one
**canonical orientation** before planning, training and prediction, by a permutation of its array axes and flips
(never a resampling: every voxel keeps its value and its place in patient space), and every prediction goes back
to the case's own grid afterwards.

The canonical orientation is :data:`CANONICAL`: the grid whose direction matrix (:class:`carve.imaging.io.Geometry`,
one LPS unit vector per array axis) is the identity, so array axis 0 runs towards the patient's left, axis 1
towards posterior, axis 2 towards superior. Each array axis is matched to the patient axis it is closest to (the
permutation that maximises the summed alignment of the direction matrix, ties broken towards the stored order),
so an oblique scan keeps its obliquity: its canonical direction matrix is the one nearest the identity among the
48 axis permutations and flips. A scan already in that order (``Geometry``'s default direction, the synthetic
demo) is left exactly as it is.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from carve.errors import InputError
from carve.imaging.io import Geometry

CANONICAL = "LPS"
# Patient axis (LPS: 0 x towards left, 1 y towards posterior, 2 z towards superior) of each canonical array axis.
CANONICAL_PATIENT_AXIS = (0, 1, 2)
AXIS_NAMES = ("right-left", "anterior-posterior", "inferior-superior")  # per canonical array axis
CONVENTION = (
    "LPS: array axes (a0, a1, a2) of every image the models see run towards left, posterior and superior "
    "(a permutation and flips of the stored axes, no resampling); predictions go back to each case's own grid"
)

# Label names that say which side or end of the body a structure lies on, per canonical array axis: a flip along
# that axis would turn one into the other.
SIDE_WORDS = (
    r"left|right|lh|rh|l|r|lt|rt|sinister|dexter|sin|dx",
    r"anterior|posterior|ventral|dorsal|front|back",
    r"superior|inferior|upper|lower|cranial|caudal|cephalic|rostral|top|bottom|head|tail",
)


@dataclass(frozen=True)
class Reorientation:
    """How a case's array maps to the canonical one: canonical axis ``j`` is the case's axis ``permutation[j]``,
    reversed where ``flips[j]``. Works on ``(..., a0, a1, a2)`` arrays (leading axes, e.g. channels, kept)."""

    permutation: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.permutation == (0, 1, 2) and not any(self.flips)

    def _spatial(self, array: np.ndarray) -> int:
        if array.ndim < 3:
            raise InputError(f"expected an array of at least 3 dimensions, got shape {array.shape}")
        return array.ndim - 3

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """The array in canonical order (C-contiguous; the array itself when nothing changes)."""
        if self.is_identity:
            return array
        lead = self._spatial(array)
        out = np.transpose(array, (*range(lead), *(lead + p for p in self.permutation)))
        flipped = tuple(lead + j for j in range(3) if self.flips[j])
        return np.ascontiguousarray(np.flip(out, flipped) if flipped else out)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_canonical`: a canonical array back in the case's own order."""
        if self.is_identity:
            return array
        lead = self._spatial(array)
        flipped = tuple(lead + j for j in range(3) if self.flips[j])
        out = np.flip(array, flipped) if flipped else array
        inverse = tuple(int(i) for i in np.argsort(self.permutation))
        return np.ascontiguousarray(np.transpose(out, (*range(lead), *(lead + i for i in inverse))))

    def shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The canonical shape of a case's spatial ``shape``."""
        return tuple(int(shape[p]) for p in self.permutation)  # type: ignore[return-value]

    def geometry(self, geometry: Geometry, shape: Sequence[int]) -> Geometry:
        """The canonical grid's geometry: the same voxels in patient space, indexed in canonical order."""
        direction = geometry.direction_matrix[:, list(self.permutation)] * np.where(self.flips, -1.0, 1.0)[None, :]
        corner = [0.0, 0.0, 0.0]
        for j, p in enumerate(self.permutation):
            if self.flips[j]:
                corner[p] = float(shape[p] - 1)
        origin = geometry.index_to_world(np.asarray(corner))[0]
        spacing = tuple(geometry.spacing_mm[p] for p in self.permutation)
        return Geometry(spacing, tuple(origin), tuple(map(tuple, direction)))


def reorientation(geometry: Geometry) -> Reorientation:
    """The permutation and flips that bring a grid of ``geometry`` to :data:`CANONICAL`."""
    d = geometry.direction_matrix
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: (
            round(sum(abs(d[CANONICAL_PATIENT_AXIS[j], perm[j]]) for j in range(3)), 9),
            perm == (0, 1, 2),
        ),
    )
    flips = tuple(bool(d[CANONICAL_PATIENT_AXIS[j], best[j]] < 0) for j in range(3))
    return Reorientation(tuple(int(p) for p in best), flips)  # type: ignore[arg-type]


def to_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry, Reorientation]:
    """(canonical array, its geometry, the :class:`Reorientation` that undoes it) of a ``(..., a0, a1, a2)``
    array on ``geometry``."""
    turn = reorientation(geometry)
    return turn.to_canonical(array), turn.geometry(geometry, array.shape[-3:]), turn


def canonical_spacing_and_shape(
    geometry: Geometry, shape: Sequence[int]
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Spacing (mm) and shape of a grid in canonical axis order (what the plan's fingerprint needs)."""
    turn = reorientation(geometry)
    return tuple(geometry.spacing_mm[p] for p in turn.permutation), turn.shape(shape)  # type: ignore[return-value]


def sided_labels(label_names: Mapping[int, str], axis: int) -> dict[int, str]:
    """The labels whose name says a side or end along canonical ``axis`` (a flip there would swap them)."""
    pattern = re.compile(rf"(?:^|[^a-z])(?:{SIDE_WORDS[axis]})(?:$|[^a-z])")
    return {v: n for v, n in label_names.items() if pattern.search(n.lower())}


def check_mirror_axes(mirror_axes: Sequence[int], label_names: Mapping[int, str]) -> tuple[int, ...]:
    """The canonical axes to mirror on, refused where a label's name says a side or end along one of them."""
    axes = tuple(sorted({int(a) for a in mirror_axes}))
    if any(a not in (0, 1, 2) for a in axes):
        raise InputError(f"mirror_axes are canonical array axes 0, 1, 2 ({', '.join(AXIS_NAMES)}), got {axes}")
    for axis in axes:
        sided = sided_labels(label_names, axis)
        if sided:
            raise InputError(
                f"mirroring on axis {axis} ({AXIS_NAMES[axis]}) would swap labels whose names say a side or end "
                f"along it: {sided}; drop axis {axis} from plan.mirror_axes"
            )
    return axes
