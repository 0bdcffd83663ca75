"""Inference bundles: a trained model folder that segments new scans on its own.

A bundle holds ``plans.json`` (spacing, normalisation, patch, channels, labels), one weight file per fold
(``folds/fold_<k>.pt``: tensors and primitives only, read with ``torch.load(weights_only=True)``),
``postprocessing.json`` (what cross-validation kept) and ``bundle.json``: the format version, the carve
version that wrote it, label names, channels, the canonical orientation the models saw and the axes they were
mirrored on (both from the plans), the prediction options of the run, and the sha256 of every file.
:func:`load_bundle` checks all of it before any job runs, so a bundle from another carve version, with a missing
or altered fold, gets one clear error naming the bundle and the problem.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import carve
from carve.errors import CarveError
from carve.pipeline.provenance import sha256_file

BUNDLE_FORMAT = "carve-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"


class BundleError(CarveError, ValueError):
    """A bundle that cannot be used."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    plans: Path
    models: tuple[Path, ...]
    postprocessing: Path
    members: Path
    labels: dict[int, str]
    channels: tuple[str, ...]
    predict: dict[str, Any] = field(default_factory=dict)
    carve_version: str = carve.__version__


def _precision_record(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return {k: record.get(k) for k in ("precision", "precision_from", "channels_last", "device")}


def write_bundle(
    out_dir: Path,
    plans_path: Path,
    model_paths: Sequence[Path],
    postprocessing_path: Path,
    predict_options: Mapping[str, Any],
    members_path: Path,
    precision_path: Path | None = None,
) -> Path:
    """Copy a run's plans, fold models, postprocessing decision and members decision
    (:mod:`carve.prediction.members`) into ``out_dir`` with a ``bundle.json``. ``precision_path`` (the run's
    ``inference_precision.json``) is recorded in ``bundle.json`` as ``inference_precision``: the precision the
    bundle's evaluation was predicted in, on what device and why (a run that uses the bundle decides its own).

    The folder appears complete or not at all (built beside it, then renamed).
    """
    out_dir = Path(out_dir)
    plans = json.loads(Path(plans_path).read_text())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / "folds").mkdir()
        files = {"plans": "plans.json", "postprocessing": "postprocessing.json", "members": "members.json"}
        shutil.copyfile(plans_path, staging / files["plans"])
        shutil.copyfile(postprocessing_path, staging / files["postprocessing"])
        shutil.copyfile(members_path, staging / files["members"])
        folds = []
        for k, model in enumerate(model_paths):
            name = f"folds/fold_{k}.pt"
            shutil.copyfile(model, staging / name)
            folds.append(name)
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "carve_version": carve.__version__,
            "plans_version": plans.get("plans_version"),
            "labels": plans["labels"],
            "channels": [c["name"] for c in plans["channels"]],
            "orientation": plans.get(
                "orientation"
            ),  # the canonical orientation the models saw (carve.imaging.orientation)
            "mirror_axes": plans.get("mirror_axes", []),  # canonical axes flipped in training and at test time
            "folds": folds,
            "predict": dict(predict_options),
            "inference_precision": _precision_record(precision_path),
            **files,
            "sha256": {name: sha256_file(staging / name) for name in [*files.values(), *folds]},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def load_bundle(path: str | Path, check_hashes: bool = True) -> Bundle:
    """Read and check a bundle; raises :class:`BundleError` naming the bundle and the problem."""
    from carve.planning.plan import PLANS_VERSION

    root = Path(path)
    where = f"bundle {root}"
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{where}: not a folder")
    if not manifest_path.is_file():
        raise BundleError(f"{where}: no {MANIFEST} (is this a carve bundle? `results/<run>/bundle` is one)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{where}: {MANIFEST} cannot be read ({err})") from None
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{where}: format {manifest.get('format')!r} version {manifest.get('version')!r}; this carve reads "
            f"{BUNDLE_FORMAT!r} version {BUNDLE_VERSION}"
        )
    if manifest.get("carve_version") != carve.__version__:
        raise BundleError(
            f"{where}: written by carve {manifest.get('carve_version')}, this is carve {carve.__version__}; "
            "use the carve version that trained it, or retrain"
        )
    if manifest.get("plans_version") != PLANS_VERSION:
        raise BundleError(f"{where}: plans version {manifest.get('plans_version')} is not {PLANS_VERSION}")
    folds = list(manifest.get("folds") or [])
    if not folds:
        raise BundleError(f"{where}: lists no fold models")
    expected = manifest.get("sha256", {})
    if "members" not in manifest:
        raise BundleError(f"{where}: {MANIFEST} names no members decision (members.json)")
    for name in [manifest["plans"], manifest["postprocessing"], manifest["members"], *folds]:
        file = root / name
        if not file.is_file():
            raise BundleError(f"{where}: {name} is missing ({len(folds)} fold(s) listed); copy the whole bundle")
        if check_hashes and sha256_file(file) != expected.get(name):
            raise BundleError(f"{where}: {name} differs from its sha256 in {MANIFEST} (altered or corrupt)")
    return Bundle(
        root=root,
        plans=root / manifest["plans"],
        models=tuple(root / f for f in folds),
        postprocessing=root / manifest["postprocessing"],
        members=root / manifest["members"],
        labels={int(k): str(v) for k, v in manifest["labels"].items()},
        channels=tuple(manifest.get("channels") or ()),
        predict=dict(manifest.get("predict") or {}),
        carve_version=manifest["carve_version"],
    )
