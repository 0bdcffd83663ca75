"""Predict one case with a fold ensemble; labels and uncertainty maps in the case's own geometry.

The image is brought to the canonical orientation the models were trained in (:mod:`carve.imaging.orientation`: a
permutation and flips of its axes, no resampling); test-time mirroring flips exactly the canonical axes that
training flipped (``plans["mirror_axes"]``, none by default), never others. The ensemble
(:func:`carve.prediction.inference.sliding_window_probabilities`) runs on the plan's grid with its accumulators in
float32
(or float16 with ``half_precision``); the result goes back to the case's grid one class at a time
(:func:`carve.prediction.uncertainty.maps_on_grid`, linear interpolation in float32), so the case's grid never holds a
``n_classes x volume`` array. What is written (:class:`PredictOutputs`), all on the case's own grid:

* ``labels``: uint8, the argmax of the ensemble's mean probabilities (raw: postprocessing is a later step,
  :mod:`carve.prediction.postprocess`, unless a decision is passed to :func:`predict_case`);
* ``entropy``: normalised predictive entropy in [0, 1], float32 (``uncertainty/{case}.nii.gz``);
* ``scores``: the per-case scores of :func:`carve.prediction.uncertainty.scores_on_grid`, over the raw labels, and the
  predicted Dice of :func:`carve.evaluation.failure.predicted_dice` (``predicted_dice_<label>``,
  ``predicted_dice_foreground``: on the plan grid's mean probabilities; higher = safer), the mean of each member's
  own predicted Dice (``member_predicted_dice_*``) and the members' pairwise Dice (``pairwise_dice_*``), in a TSV;
* in the folder ``maps``: ``mutual_information.nii.gz`` (nats, float32: disagreement between the members:
  folds, mirrorings and projections), ``confidence.nii.gz`` (the largest class probability as uint8,
  ``round(255 p)``) and one ``std_<label>.nii.gz`` per label (float32: the standard deviation across members
  of that label's probability; one 3D file per label rather than a 4D file, so that any viewer overlays it).

Float maps are rounded to :data:`MAP_DECIMALS` decimals, which changes no visible value and lets the
near-constant background compress.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from carve.errors import InputError
from carve.imaging.io import Geometry, atomic_write_text, read_channels, write_image
from carve.imaging.orientation import Reorientation, to_canonical
from carve.imaging.resample import resize_image
from carve.planning.preprocess import preprocess_image

if TYPE_CHECKING:
    from carve.prediction.inference import EnsembleResult

log = logging.getLogger("carve.prediction.predict")

MAP_DECIMALS = 4
CONFIDENCE_SCALE = 255


@dataclass(frozen=True)
class PredictOptions:
    overlap: float = 0.5
    mirror_axes: tuple[int, ...] | None = None  # None: the axes training flipped (plans); else a subset of them
    batch_windows: int = 2
    projections: int = 0  # radial re-projections (carve.prediction.projection) added as views of the image
    projection_gamma: float = 1.25  # strength base of the projections
    half_precision: bool = False  # float16 accumulators and plan-grid results (half the memory)
    precision: str = "auto"  # the forward pass: auto | fp32 | bf16 (carve.prediction.inference_precision)
    channels_last: bool = False  # model and windows in channels_last_3d (the run's decision; not a config key)

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> PredictOptions:
        """The config's ``predict`` keys that these options take (the defaults above for the others; the review
        keys only rank cases)."""
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in options.items() if k in known}
        if given.get("mirror_axes") is not None:
            given["mirror_axes"] = tuple(int(a) for a in given["mirror_axes"])
        return cls(**given)


@dataclass(frozen=True)
class PredictOutputs:
    labels: Path
    entropy: Path
    scores: Path
    maps: Path | None = None  # folder of the further voxel maps (see map_names); None: not written

    def map_path(self, name: str) -> Path | None:
        return None if self.maps is None else Path(self.maps) / f"{name}.nii.gz"


def map_names(label_names: Mapping[int, str]) -> list[str]:
    """The voxel maps written to ``PredictOutputs.maps``, without the ``.nii.gz`` suffix."""
    return ["mutual_information", "confidence", *(f"std_{label_names[k]}" for k in sorted(label_names))]


def select_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def plan_label_names(plans: Mapping) -> dict[int, str]:
    return {int(k): str(v) for k, v in plans["labels"].items()}


def prediction_mirror_axes(plans: Mapping, requested: Sequence[int] | None = None) -> tuple[int, ...]:
    """The canonical axes flipped at test time: those training flipped (``plans["mirror_axes"]``), or a subset
    of them; flips that training never saw are refused (a model need not be invariant to them)."""
    trained = tuple(int(a) for a in plans.get("mirror_axes", ()))
    if requested is None:
        return trained
    axes = tuple(sorted({int(a) for a in requested}))
    unseen = [a for a in axes if a not in trained]
    if unseen:
        raise InputError(
            f"test-time mirroring on axes {unseen} that training never flipped (the plans flip {list(trained)}); "
            "set plan.mirror_axes to train with those flips"
        )
    return axes


def forward_precision(options: PredictOptions, model, plans: Mapping, device: str, in_channels: int) -> str:
    """``options.precision`` as the forward passes run it: ``fp32``; ``bf16`` (fp32, with a warning, on a device
    without native bf16); ``auto`` decided here by timing ``model`` on windows of ``in_channels`` channels (the
    pipeline decides once per run instead, rule ``choose_inference_precision``, and passes the decision)."""
    from carve.prediction.inference_precision import decide_inference_precision
    from carve.training.precision import runnable_precision

    if options.precision == "auto":
        decision = decide_inference_precision(
            "auto", model, plans["patch_size"], options.batch_windows, device, in_channels=in_channels
        )
        return decision["precision"]
    return runnable_precision(options.precision, device, log, "predict.precision", "predicting")


def ensemble_probabilities(models: Sequence, data: np.ndarray, plans: Mapping, options: PredictOptions, device: str):
    """The ensemble's statistics on the plan grid (see
    :func:`carve.prediction.inference.sliding_window_probabilities`), the forward passes in the precision
    :func:`forward_precision` gives."""
    import torch

    from carve.evaluation.failure import PredictedDiceSums
    from carve.prediction.inference import sliding_window_probabilities
    from carve.prediction.projection import radial_projections

    precision = forward_precision(options, models[0], plans, device, in_channels=data.shape[0])
    log.info("forward passes in %s on %s (%d members)", precision, device, len(models))
    return sliding_window_probabilities(
        models,
        data,
        tuple(plans["patch_size"]),
        n_classes=int(plans["n_classes"]),
        overlap=options.overlap,
        mirror_axes=prediction_mirror_axes(plans, options.mirror_axes),
        batch_windows=options.batch_windows,
        device=device,
        accumulate_dtype=torch.float16 if options.half_precision else torch.float32,
        half_precision_output=options.half_precision,
        precision=precision,
        projections=radial_projections(options.projections, options.projection_gamma),
        member_labels=True,
        channels_last=options.channels_last,
        foreground_std_only=True,  # write_case_outputs writes the std of the labels only
        # member_predicted_dice_*: added slab by slab, so that the members stream (no projections)
        member_accumulator=partial(PredictedDiceSums, int(plans["n_classes"]), plan_label_names(plans)),
    )


def write_case_outputs(
    case: str,
    result: EnsembleResult,
    shape: Sequence[int],
    geometry: Geometry,
    label_names: Mapping[int, str],
    outputs: PredictOutputs,
    postprocessing: Mapping[int, Sequence[str]] | None = None,
    orientation: tuple[Reorientation, Geometry] | None = None,
) -> dict[str, float]:
    """Bring an :class:`~carve.prediction.inference.EnsembleResult` to the case's grid and write every output.

    ``shape`` and ``geometry`` are the grid the result is resized to; with ``orientation`` (the
    :class:`~carve.imaging.orientation.Reorientation` of the case and its own geometry) that grid is the canonical one
    and every written array goes back to the case's own axis order and geometry."""
    from carve.evaluation.failure import member_agreement, member_mean_predicted_dice, predicted_dice
    from carve.prediction.uncertainty import maps_on_grid, scores_on_grid

    shape = tuple(int(s) for s in shape)
    turn, own_geometry = orientation if orientation is not None else (Reorientation(), geometry)

    def resize(array: np.ndarray) -> np.ndarray:
        return resize_image(array, shape, geometry.spacing_mm, order=1)

    def write_own(path: Path, array: np.ndarray) -> None:
        write_image(path, turn.from_canonical(array), own_geometry)

    def write_map(path: Path | None, array: np.ndarray) -> None:
        """Write a float map rounded in place (it is not used again), or a uint8 map as it is."""
        if path is not None:
            write_own(path, array if array.dtype == np.uint8 else np.round(array, MAP_DECIMALS, out=array))

    std_maps, first, n_members = result.std, result.std_first_class, int(result.n_members)
    expected_dice = predicted_dice(result.mean_probabilities, label_names)  # on the plan grid, one class at a time
    expected_dice |= member_agreement(result.member_labels, label_names)  # NaN with fewer than two members
    expected_dice |= member_mean_predicted_dice(result.member_statistics)  # the same whatever the number of members
    maps = maps_on_grid(result.mean_probabilities, result.mean_entropy, resize)
    del result  # the plan grid's mean probabilities are freed here when the caller holds no reference
    if outputs.maps is not None:
        confidence = maps.confidence  # scaled in place: not used again
        confidence *= CONFIDENCE_SCALE
        write_map(outputs.map_path("confidence"), np.rint(confidence, out=confidence).astype(np.uint8))
    std_sums = {}
    for k in sorted(label_names):
        std = resize(std_maps[k - first])
        std_sums[k] = float(std[maps.labels == k].sum(dtype=np.float64))
        write_map(outputs.map_path(f"std_{label_names[k]}"), std)
        del std
    del std_maps
    scores = scores_on_grid(maps.labels, maps.normalised_entropy, maps.mutual_information, std_sums, label_names)
    write_map(outputs.entropy, maps.normalised_entropy)
    write_map(outputs.map_path("mutual_information"), maps.mutual_information)
    labels = maps.labels
    if postprocessing:
        from carve.prediction.postprocess import apply_postprocessing

        labels = apply_postprocessing(labels, postprocessing)
    row = {"case": case, "members": n_members, **{k: float(v) for k, v in (scores | expected_dice).items()}}
    atomic_write_text(outputs.scores, pd.DataFrame([row]).to_csv(sep="\t", index=False))
    write_own(outputs.labels, labels)
    counts = {int(v): int(n) for v, n in zip(*np.unique(labels, return_counts=True), strict=True)}
    log.info("case '%s': voxels per label value %s", case, counts)
    return row


def predict_case(
    case: str,
    image_path: Path,
    model_paths: Sequence[Path],
    plans: Mapping,
    out_labels: Path,
    out_uncertainty: Path,
    out_scores: Path,
    options: PredictOptions = PredictOptions(),
    device: str = "auto",
    threads: int = 1,
    postprocessing: Mapping[int, Sequence[str]] | None = None,
    out_maps: Path | None = None,
) -> dict[str, float]:
    """Ensemble the models over one image and write :class:`PredictOutputs` on the image's own grid.

    ``out_uncertainty`` is the normalised entropy map; ``out_maps`` the folder of the further maps (not written
    when None). ``postprocessing`` (operations per label value,
    :func:`carve.prediction.postprocess.load_postprocessing`)
    is applied to the written labels only; the scores and maps describe the ensemble's raw prediction.
    """
    import torch

    from carve.training.network import load_model

    torch.set_num_threads(max(1, int(threads)))
    device = select_device(device)
    image, own_geometry = read_channels(image_path)  # (C, z, y, x)
    image, geometry, turn = to_canonical(image, own_geometry)
    shape = image.shape[1:]
    data, _ = preprocess_image(image, geometry, plans)
    del image
    models = [load_model(p, device=device)[0] for p in model_paths]
    if plans.get("classes") is not None:  # one dataset of several: its classes only (carve.training.multidomain)
        from carve.training.multidomain import RestrictedModel

        models = [RestrictedModel(m, plans["classes"]) for m in models]
    log.info(
        "case '%s': axes %s%s to canonical; %d model(s), plan grid %s, mirror axes %s, %d projection(s), device %s",
        case,
        turn.permutation,
        f" flipped {[j for j in range(3) if turn.flips[j]]}" if any(turn.flips) else "",
        len(models),
        data.shape[1:],
        prediction_mirror_axes(plans, options.mirror_axes),
        options.projections,
        device,
    )
    outputs = PredictOutputs(Path(out_labels), Path(out_uncertainty), Path(out_scores), out_maps)
    names = plan_label_names(plans)
    ensemble = [ensemble_probabilities(models, data, plans, options, device)]
    del data, models
    # handed over unnamed (popped), so that write_case_outputs can free the plan grid's arrays as it goes
    return write_case_outputs(
        case, ensemble.pop(), shape, geometry, names, outputs, postprocessing, orientation=(turn, own_geometry)
    )
