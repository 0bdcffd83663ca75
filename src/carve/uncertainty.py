"""Voxel and case uncertainty from ensemble probabilities (pure numpy).

Inputs are the streamed statistics of :func:`carve.inference.sliding_window_probabilities`:
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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, special

if TYPE_CHECKING:
    from carve.inference import EnsembleResult

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

    def mean_over(values: np.ndarray, mask: np.ndarray) -> float:
        return float(values[mask].mean(dtype=np.float64)) if mask.any() else 0.0

    foreground = labels > 0
    region = ndimage.binary_dilation(foreground, structure=ndimage.generate_binary_structure(3, 1))
    norm_entropy = normalised_entropy(p)
    mi = mutual_information(p, mean_entropy)

    scores = {
        "mean_normalised_entropy": mean_over(norm_entropy, region),
        "mean_mutual_information": mean_over(mi, region),
        "uncertain_foreground_fraction": mean_over(norm_entropy > UNCERTAIN_THRESHOLD, foreground),
    }
    std_sum = 0.0
    for k in range(1, n_classes):
        mask = labels == k
        std_k = np.asarray(std[k], dtype=np.float32)[mask]
        std_sum += float(std_k.sum(dtype=np.float64))
        name = label_names.get(k, f"label_{k}") if label_names else f"label_{k}"
        scores[f"mean_std_{name}"] = float(std_k.mean(dtype=np.float64)) if std_k.size else 0.0
    n_foreground = int(foreground.sum())
    scores["mean_std_foreground"] = std_sum / n_foreground if n_foreground else 0.0
    scores["foreground_voxels"] = float(n_foreground)
    return scores


def uncertainty_map(result: EnsembleResult) -> np.ndarray:
    """The voxel map carve writes as ``uncertainty/{case}.nii.gz``: normalised predictive entropy, float32."""
    return normalised_entropy(result.mean_probabilities)
