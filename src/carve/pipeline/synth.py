"""The bundled synthetic demo: MR-like volumes with two touching structures that a threshold cannot separate.

Shapes live in patient space (millimetres), the voxel grid is anisotropic and rotated obliquely, so the labels
are proper anatomy-like shapes only when spacing and direction are honoured. Each case has a body, a lobulated
ellipsoid "organ" (label 1), a curved tube wrapped against it (label 2) whose intensity overlaps the organ's,
unlabelled distractor blobs as bright as both, a smooth multiplicative bias field, a little blur and Rician noise.
Everything is a pure function of the seed.

A second intensity domain (``domain=1``, T2-like) inverts the contrasts: dark organ and tube in a brighter body,
a dark rim, dark distractors; a multi-dataset demo (config ``demo.domains``) alternates the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from carve.export.dicom_write import write_dicom_series
from carve.imaging.io import Geometry, atomic_write_text, write_image
from carve.pipeline.demo import demo_role

# array axis 0 -> S (z), axis 1 -> P (y), axis 2 -> L (x): an axial grid before the oblique rotation
AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _random_geometry(
    rng: np.random.Generator, shape: Sequence[int], spacing_mm: Sequence[float], oblique_deg: float | Sequence[float]
) -> Geometry:
    lo, hi = (oblique_deg, oblique_deg) if np.isscalar(oblique_deg) else oblique_deg
    angle = np.deg2rad(rng.uniform(lo, hi)) * rng.choice([-1.0, 1.0])
    axis = _unit(rng.normal(size=3))
    direction = Rotation.from_rotvec(angle * axis).as_matrix() @ AXIAL
    centre_mm = rng.uniform(-30.0, 30.0, size=3)
    half = direction @ (np.asarray(spacing_mm) * (np.asarray(shape) - 1) / 2.0)
    return Geometry(tuple(spacing_mm), tuple(centre_mm - half), tuple(map(tuple, direction)))


def _smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing_mm: Sequence[float], sigma_mm: float
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma_mm`` in physical space."""
    field = ndimage.gaussian_filter(rng.normal(size=tuple(shape)), [sigma_mm / s for s in spacing_mm], mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def _lobulated_ellipsoid(
    rng: np.random.Generator, centre: np.ndarray, semi_axes_mm: np.ndarray
) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """Level function (< 0 inside) of a randomly oriented ellipsoid with a lobulated surface, and its rotation."""
    rot = Rotation.random(random_state=rng).as_matrix()
    waves = [
        (rng.uniform(0.04, 0.10), rng.integers(2, 4) * np.pi, _unit(rng.normal(size=3)), rng.uniform(0, 6.3))
        for _ in range(3)
    ]

    def level(p: np.ndarray) -> np.ndarray:
        q = ((p - centre) @ rot) / semi_axes_mm
        r = np.linalg.norm(q, axis=-1)
        u = q / np.maximum(r, 1e-9)[..., None]
        return r - 1.0 - sum(a * np.sin(f * (u @ w) + phase) for a, f, w, phase in waves)

    return level, rot


def _tube(
    rng: np.random.Generator, p: np.ndarray, touch: np.ndarray, normal: np.ndarray, radius_mm: float
) -> np.ndarray:
    """Signed distance (mm, < 0 inside) to a curved tube whose middle touches the point ``touch``."""
    tangent = _unit(np.cross(normal, rng.normal(size=3)))
    half_length, bend = rng.uniform(16.0, 24.0), rng.uniform(4.0, 9.0)
    tau = np.linspace(-1.0, 1.0, 48)
    middle = touch + 0.6 * radius_mm * normal
    centre_line = middle + np.outer(tau * half_length, tangent) - np.outer(tau**2 * bend, normal)
    radii = radius_mm * (1.0 - 0.25 * tau**2)
    best = np.full(p.shape[:-1], np.inf)
    for c, r in zip(centre_line, radii, strict=True):
        np.minimum(best, np.linalg.norm(p - c, axis=-1) - r, out=best)
    return best


def synthesize_case(
    seed: int,
    shape: Sequence[int] = (24, 64, 64),
    spacing_mm: Sequence[float] = (3.0, 1.0, 1.0),
    oblique_deg: float | Sequence[float] = (5.0, 20.0),
    domain: int = 0,
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One synthetic case: ``(image float32, label uint8 {0, 1, 2}, geometry)``; a pure function of the arguments.
    ``domain`` 0 is T1-like (bright structures), 1 T2-like (dark structures in a brighter body)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    geometry = _random_geometry(rng, shape, spacing_mm, oblique_deg)
    idx = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    world = geometry.index_to_world(idx).reshape(*shape, 3)
    centre = geometry.index_to_world((np.asarray(shape) - 1) / 2.0)[0]
    p = world - centre  # patient-space mm relative to the centre of the field of view
    extent = np.asarray(spacing_mm) * np.asarray(shape)

    body_level = np.linalg.norm(p / np.array([0.48, 0.45, 0.6]) / extent.max(), axis=-1)
    body = body_level < 1.0
    fat = body & (body_level > 1.0 - rng.uniform(3.0, 5.0) / (0.45 * extent.max()))  # bright rim, as fat on T1
    organ_centre = rng.uniform(-4.0, 4.0, size=3)
    semi = np.array([rng.uniform(12, 17), rng.uniform(9, 12), rng.uniform(7, 9.5)]) * extent.min() / 64.0
    level, rot = _lobulated_ellipsoid(rng, organ_centre, semi)
    organ = level(p) < 0
    direction = _unit(rng.normal(size=3))
    ray = organ_centre + np.outer(np.linspace(0.5, 1.6, 111), rot @ (semi * direction))
    touch = ray[np.argmax(level(ray) >= 0)]  # first point of the ray on the organ's surface
    normal = _unit(rot @ (direction / semi))
    tube = (_tube(rng, p, touch, normal, rng.uniform(4.5, 6.0) * extent.min() / 64.0) < 0) & ~organ

    distractors = np.zeros(shape, dtype=bool)
    near = ndimage.binary_dilation(organ | tube, iterations=2) | ~body
    for _ in range(int(rng.integers(4, 8))):
        for _attempt in range(20):
            c, r = rng.uniform(-0.35, 0.35, size=3) * extent[::-1], rng.uniform(3.5, 9.0, size=3)  # (x, y, z)
            blob = np.linalg.norm((p - c) / r, axis=-1) < 1.0
            if blob.any() and not (blob & (near | distractors)).any():
                distractors |= blob
                break

    mu_organ = rng.uniform(0.60, 0.70)
    mu_tube = mu_organ + rng.uniform(0.05, 0.09)  # brighter, as a contrast-filled vessel; distractors overlap it
    if domain not in (0, 1):
        raise ValueError(f"domain must be 0 or 1, got {domain}")
    t2 = domain == 1  # T2-like: the same anatomy with inverted contrasts (the random draws stay the same)
    if t2:
        mu_organ, mu_tube = 0.22 - (mu_organ - 0.65), 0.14 - (mu_tube - mu_organ - 0.07)
    image = np.where(body, 0.62 if t2 else 0.30, 0.04) + 0.04 * _smooth_noise(rng, shape, spacing_mm, 6.0) * body
    mu_fat = rng.uniform(0.58, 0.72)
    image = np.where(fat, 0.12 + 0.5 * (mu_fat - 0.65) if t2 else mu_fat, image)
    texture = 0.07 * _smooth_noise(rng, shape, spacing_mm, 3.0)
    image = np.where(organ, mu_organ + texture, image)
    image = np.where(tube, mu_tube + 0.8 * texture, image)
    mu_blob = rng.uniform(0.55, 0.85)
    image = np.where(distractors, (0.08 + 0.3 * (mu_blob - 0.55) if t2 else mu_blob) + texture, image)
    gradient = _unit(rng.normal(size=3)) * rng.uniform(0.15, 0.3)
    curvature = rng.uniform(0.0, 0.3)
    image = image * np.exp(2.0 * p @ gradient / extent.max() - curvature * (p**2).sum(-1) / extent.max() ** 2)
    image = ndimage.gaussian_filter(image, [0.7 / s for s in spacing_mm])
    sigma = 0.035
    image = np.sqrt((image + sigma * rng.normal(size=shape)) ** 2 + (sigma * rng.normal(size=shape)) ** 2)
    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[tube] = 2
    return (1000.0 * image).astype(np.float32), label, geometry


def generate_demo(
    out_dir: str | os.PathLike,
    n_train: int = 8,
    n_test: int = 2,
    seed: int = 0,
    shape: Sequence[int] = (24, 64, 64),
    spacing_mm: Sequence[float] = (3.0, 1.0, 1.0),
    domains: Sequence[str] = (),
    n_unlabelled: int = 0,
) -> Path:
    """Write the demo under ``out_dir`` (``dicom/<case>/IM*.dcm``, ``labels/<case>.nii.gz``, ``cases.tsv``).

    ``n_unlabelled`` further cases (after the test cases) get role ``unlabelled`` and no label file.

    With ``domains`` (dataset names), case ``i`` belongs to ``domains[i % len(domains)]`` and is drawn in
    intensity domain ``i % 2`` (the sheet gains a ``dataset`` column).

    The sheet is removed first and written last (atomically), so an interrupted run leaves no complete-looking
    sheet. Returns the sheet's path. Deterministic for a given seed.
    """
    if n_train < 1 or n_test < 0 or n_unlabelled < 0:
        raise ValueError(
            f"generate_demo needs n_train >= 1, n_test >= 0 and n_unlabelled >= 0, got {n_train}, {n_test} and "
            f"{n_unlabelled}"
        )
    out_dir = Path(out_dir)
    sheet = out_dir / "cases.tsv"
    sheet.unlink(missing_ok=True)
    rows = ["case\timage\tlabel\trole" + ("\tdataset" if domains else "")]
    for i in range(n_train + n_test + n_unlabelled):
        case = f"demo_{i:03d}"
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        image, label, geometry = synthesize_case(
            case_seed, shape, spacing_mm, domain=(i % len(domains) % 2) if domains else 0
        )
        write_dicom_series(
            image,
            geometry,
            out_dir / "dicom" / case,
            modality="MR",
            series_description=f"carve demo {case}",
            uid_seed=f"carve-demo-{seed}-{case}",
        )
        role = demo_role(i, n_train, n_test)
        label_column = "" if role == "unlabelled" else f"labels/{case}.nii.gz"
        if role != "unlabelled":
            write_image(out_dir / "labels" / f"{case}.nii.gz", label, geometry)
        row = f"{case}\tdicom/{case}\t{label_column}\t{role}"
        rows.append(row + (f"\t{domains[i % len(domains)]}" if domains else ""))
    atomic_write_text(sheet, "\n".join(rows) + "\n")
    return sheet
