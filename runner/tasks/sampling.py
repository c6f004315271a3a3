"""Seeded row selection: caps, stratified holdout and LM-BFF k-shot splits.

All of it uses numpy's legacy `RandomState`, whose streams numpy keeps fixed across releases (the
`Generator` API does not promise that), so a seed names the same rows on every machine and version.
Selected indices are returned sorted, so a subset keeps the file's row order; training shuffles anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

# LM-BFF (Gao et al. 2021, tools/generate_k_shot_data.py) samples STS-B by this bin: score < 2.5 -> 0.
REGRESSION_BIN_THRESHOLD = 2.5


def subsample(n: int, size: int, seed: int) -> list[int]:
    """`size` of `n` row indices: a seeded permutation, first `size`, sorted."""
    import numpy as np

    if size >= n:
        return list(range(n))
    return sorted(np.random.RandomState(seed).permutation(n)[:size].tolist())


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) indices; round(fraction * class size) rows of every class are held out."""
    import numpy as np

    rng = np.random.RandomState(seed)
    labels = np.asarray(labels)
    kept, held = [], []
    for label in np.unique(labels):  # sorted classes, so the stream is consumed in a fixed order
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_held = int(np.floor(fraction * len(members) + 0.5))
        held.extend(members[:n_held].tolist())
        kept.extend(members[n_held:].tolist())
    return sorted(kept), sorted(held)


def k_shot_bins(labels: Sequence[float], regression: bool) -> list[int]:
    """The class used for balanced sampling: the label itself, or the LM-BFF bin for regression."""
    if regression:
        return [int(float(score) >= REGRESSION_BIN_THRESHOLD) for score in labels]
    return [int(label) for label in labels]


def k_shot(bins: Sequence[int], k: int, seed: int) -> tuple[list[int], list[int]]:
    """LM-BFF k-shot: (train, dev) indices, K of each class each, disjoint.

    As LM-BFF does: one seeded shuffle of all train rows, then per class the first K rows go to train and
    the next K to dev. (LM-BFF shuffles with np.random.seed(seed); RandomState(seed).permutation draws the
    same permutation, so given the same train file order the same rows are picked.)
    """
    import numpy as np

    order = np.random.RandomState(seed).permutation(len(bins))
    by_class: dict[int, list[int]] = {}
    for index in order.tolist():
        by_class.setdefault(bins[index], []).append(index)
    short = {c: len(rows) for c, rows in sorted(by_class.items()) if len(rows) < 2 * k}
    if short:
        raise ValueError(f"k_shot={k} needs {2 * k} train rows per class (K train + K dev); "
                         f"classes with fewer: {short}")
    train = [i for c in sorted(by_class) for i in by_class[c][:k]]
    dev = [i for c in sorted(by_class) for i in by_class[c][k:2 * k]]
    return sorted(train), sorted(dev)
