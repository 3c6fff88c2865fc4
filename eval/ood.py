"""Out-of-distribution detection: FPR at 95% TPR and AUROC.

In-distribution items are positives and should score higher than out-of-distribution ones (for a
detector: the confidence it gives a description that is in the image vs one that refers to nothing).
"""

from __future__ import annotations

import numpy as np


def _scores(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: OOD metrics need at least one in-distribution and one OOD score")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Share of OOD items scoring at or above the highest threshold that keeps ``tpr`` of the ID items."""
    id_scores, ood_scores = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    allowed_misses = int(np.floor(len(id_scores) * (1 - tpr) + 1e-9))
    threshold = np.sort(id_scores)[allowed_misses]
    return float(np.mean(ood_scores >= threshold))


def auroc(id_scores, ood_scores) -> float:
    """Probability that a random ID item outscores a random OOD item (ties count one half)."""
    id_scores, ood_scores = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    from scipy.stats import rankdata  # here: scipy.stats is slow to import

    ranks = rankdata(np.concatenate([id_scores, ood_scores]))  # average ranks: ties share
    n_id, n_ood = len(id_scores), len(ood_scores)
    return float((ranks[:n_id].sum() - n_id * (n_id + 1) / 2) / (n_id * n_ood))


def ood_metrics(id_scores, ood_scores, prefix: str = "ood/") -> dict[str, float]:
    return {f"{prefix}fpr@95tpr": fpr_at_tpr(id_scores, ood_scores), f"{prefix}auroc": auroc(id_scores, ood_scores)}
