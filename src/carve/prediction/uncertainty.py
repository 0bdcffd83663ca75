"""Voxel and case uncertainty from ensemble probabilities (pure numpy).

Inputs are the streamed statistics of :func:`carve.prediction.inference.sliding_window_probabilities`:
``mean_probabilities`` ``(n_classes, z, y, x)`` (label 0 is background), ``mean_entropy`` ``(z, y, x)``
(mean over members of each member's entropy, nats) and ``std`` ``(n_classes, z, y, x)`` (per-label std of
probabilities across members). Entropies are in nats (natural logarithm), with ``0 log 0 = 0``.

* Predictive entropy ``H(p_mean) = -sum_c p_mean,c log p_mean,c``: total uncertainty.
* Normalised entropy ``H / log(n_classes)`` in ``[0, 1]``: 0 for a one-hot prediction, 1 for uniform.
* Mutual information ``MI = H(p_mean) - mean_m H(p_m)`` (BALD): the part of the uncertainty due to
  disagreement between members (epistemic); 0 when all members agree, at most ``log(n_classes)``.
  Clipped at 0 against rounding.

Probability arrays may be float16; every computation runs per class in float32 so that memory stays
``O(volume)`` beyond the inputs.

:func:`maps_on_grid` brings the ensemble back to a case's own grid one class at a time: the labels (argmax),
the confidence (the largest class probability), the normalised entropy and the mutual information, without a
``n_classes x volume`` array on that grid. :func:`scores_on_grid` computes the per-case scores from those
maps, as :func:`case_uncertainty_scores` does from the plan-grid statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, special

if TYPE_CHECKING:
    from carve.prediction.inference import EnsembleResult

UNCERTAIN_THRESHOLD = 0.5  # normalised entropy above which a foreground voxel counts as uncertain


def _check_probabilities(mean_probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(mean_probabilities)
    if p.ndim != 4 or p.shape[0] < 2:
        raise ValueError(f"mean_probabilities must be (n_classes >= 2, z, y, x), got shape {p.shape}")
    return p


def predictive_entropy(mean_probabilities: np.ndarray) -> np.ndarray:
    """Entropy in nats of the mean prediction, ``(z, y, x)`` float32."""
    p = _check_probabilities(mean_probabilities)
    entropy = np.zeros(p.shape[1:], dtype=np.float32)
    for c in range(p.shape[0]):
        entropy += special.entr(np.clip(p[c].astype(np.float32, copy=False), 0.0, 1.0))
    return entropy


def normalised_entropy(mean_probabilities: np.ndarray) -> np.ndarray:
    """Predictive entropy divided by ``log(n_classes)``, in ``[0, 1]``, ``(z, y, x)`` float32."""
    p = _check_probabilities(mean_probabilities)
    entropy = predictive_entropy(p)
    entropy /= np.float32(np.log(p.shape[0]))
    return np.clip(entropy, 0.0, 1.0, out=entropy)


def mutual_information(mean_probabilities: np.ndarray, mean_entropy: np.ndarray) -> np.ndarray:
    """``H(mean) - mean(H)`` in nats, clipped at 0, ``(z, y, x)`` float32."""
    p = _check_probabilities(mean_probabilities)
    if np.shape(mean_entropy) != p.shape[1:]:
        raise ValueError(f"mean_entropy shape {np.shape(mean_entropy)} != volume shape {p.shape[1:]}")
    mi = predictive_entropy(p)
    mi -= np.asarray(mean_entropy, dtype=np.float32)
    return np.maximum(mi, 0.0, out=mi)


def _label_name(k: int, label_names: Mapping[int, str] | None) -> str:
    return label_names.get(k, f"label_{k}") if label_names else f"label_{k}"


def scores_on_grid(
    labels: np.ndarray,
    normalised_entropy_map: np.ndarray,
    mutual_information_map: np.ndarray,
    std_sums: Mapping[int, float],
    label_names: Mapping[int, str] | None = None,
) -> dict[str, float]:
    """Per-case uncertainty scores from voxel maps on one grid (see :func:`case_uncertainty_scores`).

    ``labels`` is the predicted label map, ``normalised_entropy_map`` and ``mutual_information_map`` the voxel
    maps on the same grid, and ``std_sums[k]`` the sum of the std of label ``k``'s probability over the voxels
    predicted as ``k`` (for every label ``k >= 1``; the std maps themselves need not be in memory together), so
    ``len(std_sums) + 1`` is the number of classes ``K``.
    """
    labels = np.asarray(labels)
    if np.shape(normalised_entropy_map) != labels.shape or np.shape(mutual_information_map) != labels.shape:
        raise ValueError(
            f"shapes disagree: labels {labels.shape}, entropy {np.shape(normalised_entropy_map)}, "
            f"mutual information {np.shape(mutual_information_map)}"
        )

    def mean_over(values: np.ndarray, mask: np.ndarray) -> float:
        return float(values[mask].mean(dtype=np.float64)) if mask.any() else 0.0

    foreground = labels > 0
    region = ndimage.binary_dilation(foreground, structure=ndimage.generate_binary_structure(3, 1))
    scores = {
        "mean_normalised_entropy": mean_over(np.asarray(normalised_entropy_map), region),
        "mean_mutual_information": mean_over(np.asarray(mutual_information_map), region),
        # mean over members of each member's normalised entropy, H(p_m) / log K = H(p̄) / log K - MI / log K:
        # its expectation does not depend on the number of members (one member: mean_normalised_entropy)
        "mean_member_entropy": mean_over(
            np.asarray(normalised_entropy_map) - np.asarray(mutual_information_map) / np.log(len(std_sums) + 1),
            region,
        ),
        "uncertain_foreground_fraction": mean_over(
            np.asarray(normalised_entropy_map) > UNCERTAIN_THRESHOLD, foreground
        ),
    }
    for k in sorted(std_sums):
        count = int(np.count_nonzero(labels == k))
        scores[f"mean_std_{_label_name(k, label_names)}"] = float(std_sums[k]) / count if count else 0.0
    n_foreground = int(foreground.sum())
    scores["mean_std_foreground"] = float(sum(std_sums.values())) / n_foreground if n_foreground else 0.0
    scores["foreground_voxels"] = float(n_foreground)
    return scores


def case_uncertainty_scores(
    mean_probabilities: np.ndarray,
    mean_entropy: np.ndarray,
    std: np.ndarray,
    labels: np.ndarray,
    label_names: Mapping[int, str] | None = None,
) -> dict[str, float]:
    """Per-case uncertainty scores from the ensemble statistics and the predicted label map ``labels``.

    ``labels`` is the final predicted label map ``(z, y, x)`` (0 = background), usually the argmax of
    ``mean_probabilities``. Let F be the predicted foreground (``labels > 0``) and R = F dilated by one
    voxel (face connectivity): the foreground plus its one-voxel boundary band, where segmentation errors
    concentrate. Scores (higher = less certain; across cases they are expected to correlate negatively
    with the Dice score, as the per-case score of SPU-Net):

    * ``mean_normalised_entropy``: mean normalised predictive entropy over R;
    * ``mean_mutual_information``: mean mutual information (nats) over R;
    * ``mean_member_entropy``: mean over R of the members' mean normalised entropy (``H(p̄) - MI``, over
      ``log K``): unlike the two above, its expectation does not depend on the number of members, so a
      cross-validation case (one fold) and a test case (every fold) are scored alike;
    * ``uncertain_foreground_fraction``: fraction of F with normalised entropy > 0.5;
    * ``mean_std_foreground``: mean over F of the std of the probability of the predicted label;
    * ``mean_std_<name>`` for every label k >= 1 (name from ``label_names``, else ``label_<k>``): mean
      over voxels predicted as k of ``std[k]``;
    * ``foreground_voxels``: the number of voxels of F (a float, like every value).

    Empty prediction (F empty, or a label never predicted): the means over an empty set are defined
    as 0.0 (no predicted structure carries no segmentation uncertainty) and ``foreground_voxels`` is 0;
    callers that correlate scores with Dice should treat ``foreground_voxels == 0`` separately.
    """
    p = _check_probabilities(mean_probabilities)
    n_classes = p.shape[0]
    volume = p.shape[1:]
    labels = np.asarray(labels)
    if labels.shape != volume or np.shape(std) != p.shape:
        raise ValueError(f"shapes disagree: mean_probabilities {p.shape}, std {np.shape(std)}, labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes - 1}], got [{labels.min()}, {labels.max()}]")
    std_sums = {
        k: float(np.asarray(std[k], dtype=np.float32)[labels == k].sum(dtype=np.float64)) for k in range(1, n_classes)
    }
    return scores_on_grid(labels, normalised_entropy(p), mutual_information(p, mean_entropy), std_sums, label_names)


@dataclass(frozen=True)
class GridMaps:
    """Voxel maps of one case on one grid, ``(z, y, x)`` each (see :func:`maps_on_grid`)."""

    labels: np.ndarray  # uint8: argmax of the mean probabilities
    confidence: np.ndarray  # float32: the largest mean class probability, in [1 / n_classes, 1]
    normalised_entropy: np.ndarray  # float32, in [0, 1]
    mutual_information: np.ndarray  # float32, nats, in [0, log(n_classes)]


def maps_on_grid(
    mean_probabilities: np.ndarray,
    mean_entropy: np.ndarray,
    resize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> GridMaps:
    """Labels, confidence, normalised entropy and mutual information on another grid, one class at a time.

    ``resize`` maps one ``(z, y, x)`` plan-grid array to the target grid as float32 (``None``: the plan grid
    itself). Each class probability is resized once and folded into a running argmax, maximum and entropy, so
    memory on the target grid is a few volumes whatever the number of classes. The entropy is that of the
    resized probabilities; the mutual information is that entropy minus the resized mean member entropy, clipped
    at 0 (interpolation preserves ``H(mean) >= mean(H)`` up to rounding, the entropy being concave).
    """
    p = _check_probabilities(mean_probabilities)
    n_classes = p.shape[0]
    if n_classes > 256:
        raise ValueError(f"at most 256 classes fit uint8 labels, got {n_classes}")
    if np.shape(mean_entropy) != p.shape[1:]:
        raise ValueError(f"mean_entropy shape {np.shape(mean_entropy)} != volume shape {p.shape[1:]}")

    def on_grid(array: np.ndarray) -> np.ndarray:
        """A new float32 array on the target grid."""
        if resize is None:
            return np.array(array, dtype=np.float32)
        out = resize(array)
        if out.dtype == np.float32 and not np.may_share_memory(out, array):
            return out
        return np.array(out, dtype=np.float32)

    best = labels = entropy = None
    for c in range(n_classes):
        pc = on_grid(p[c])
        np.clip(pc, 0.0, 1.0, out=pc)
        if best is None:
            best, labels, entropy = pc, np.zeros(pc.shape, np.uint8), special.entr(pc)
        else:
            labels[pc > best] = c
            np.maximum(best, pc, out=best)
            entropy += special.entr(pc)
        del pc
    mi = on_grid(mean_entropy)
    np.subtract(entropy, mi, out=mi)
    np.maximum(mi, 0.0, out=mi)
    entropy /= np.float32(np.log(n_classes))
    np.clip(entropy, 0.0, 1.0, out=entropy)
    return GridMaps(labels=labels, confidence=best, normalised_entropy=entropy, mutual_information=mi)


def uncertainty_map(result: EnsembleResult) -> np.ndarray:
    """The voxel map carve writes as ``uncertainty/{case}.nii.gz``: normalised predictive entropy, float32."""
    return normalised_entropy(result.mean_probabilities)
