"""Split one FFN's d_ff neurons into E experts of equal size m = d_ff / E (MoEfication §3.1).

Every split returns a LongTensor `groups` of shape (E, m): row e lists the neurons of expert e, ascending.
    random         a seeded permutation cut into E pieces (the paper's baseline)
    param_cluster  balanced k-means on the L2-normalised rows of W_in: neurons whose input weights point the
                   same way fire on the same tokens (KMeansConstrained, size_min = size_max = m)
    coact          the co-activation graph (edge i-j = how many tokens activate both) cut into E parts by
                   METIS, then made exactly balanced by moving the neurons that cost the least edge weight
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SPLITS = ("random", "param_cluster", "coact")


def groups_from_labels(labels, num_experts: int) -> Tensor:
    """(d_ff,) expert id per neuron -> (E, m) neuron ids per expert; raises unless every expert has m."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    sizes = torch.bincount(labels, minlength=num_experts)
    if sizes.numel() != num_experts or not bool((sizes == sizes[0]).all()):
        raise ValueError(f"unbalanced split: expert sizes {sizes.tolist()}")
    order = torch.argsort(labels * labels.numel() + torch.arange(labels.numel()))  # by expert, then neuron
    return order.view(num_experts, -1)


def random_split(d_ff: int, num_experts: int, seed: int) -> Tensor:
    perm = torch.randperm(d_ff, generator=torch.Generator().manual_seed(seed))
    return perm.view(num_experts, -1).sort(dim=1).values


def param_cluster(w_in: Tensor, num_experts: int, seed: int, n_init: int = 3) -> Tensor:
    """Balanced k-means of the normalised rows of w_in (d_ff, d)."""
    from k_means_constrained import KMeansConstrained

    d_ff = w_in.shape[0]
    size = d_ff // num_experts
    points = torch.nn.functional.normalize(w_in.detach().float(), dim=1).numpy().astype(np.float64)
    km = KMeansConstrained(n_clusters=num_experts, size_min=size, size_max=size, random_state=seed,
                           n_init=n_init)
    return groups_from_labels(km.fit_predict(points), num_experts)


@torch.no_grad()
def coactivation(hidden_batches) -> Tensor:
    """(d_ff, d_ff) float64 counts of tokens on which both neurons are active (h > 0); zero diagonal.

    `hidden_batches` yields (n, d_ff) activation blocks. For ReLU and GELU alike, h > 0 iff W_in x + b > 0.
    """
    total = None
    for h in hidden_batches:
        on = (h > 0).float()
        block = (on.t() @ on).double()
        total = block if total is None else total + block
    total.fill_diagonal_(0)
    return total


def coact_split(coact: Tensor, num_experts: int, seed: int) -> Tensor:
    """METIS partition of the co-activation graph into E parts, then exact balancing."""
    import pymetis

    d_ff = coact.shape[0]
    top = float(coact.max())
    weights = torch.round(coact / top * 1000).long() if top > 0 else torch.zeros_like(coact, dtype=torch.long)
    rows, cols = torch.nonzero(weights, as_tuple=True)  # row-major, so each row's neighbours are contiguous
    starts = torch.zeros(d_ff + 1, dtype=torch.long)
    starts[1:] = torch.cumsum(torch.bincount(rows, minlength=d_ff), 0)
    if rows.numel() == 0:  # no co-activation at all: nothing to cut, any balanced split is as good
        return random_split(d_ff, num_experts, seed)
    graph = pymetis.CSRAdjacency(starts.tolist(), cols.tolist())
    result = pymetis.part_graph(num_experts, graph, eweights=weights[rows, cols].tolist(),
                                options=pymetis.Options(seed=seed, ufactor=10))
    labels = balance(np.asarray(result.vertex_part), coact, num_experts)
    return groups_from_labels(labels, num_experts)


def balance(labels: np.ndarray, coact: Tensor, num_experts: int) -> np.ndarray:
    """Make every part exactly d_ff / E: repeatedly move, out of an over-full part, the neuron (and into the
    under-full part) whose move loses the least co-activation weight to its old part."""
    labels = np.array(labels, dtype=np.int64)
    a = coact.double().numpy()
    size = len(labels) // num_experts
    conn = a @ np.eye(num_experts)[labels]  # (d_ff, E): weight from each neuron into each part
    counts = np.bincount(labels, minlength=num_experts)
    while counts.max() > size:
        src = int(np.argmax(counts))
        members = np.flatnonzero(labels == src)
        open_parts = np.flatnonzero(counts < size)
        gain = conn[np.ix_(members, open_parts)] - conn[members, src][:, None]
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        neuron, dst = members[i], open_parts[j]
        labels[neuron] = dst
        counts[src] -= 1
        counts[dst] += 1
        conn[:, src] -= a[:, neuron]
        conn[:, dst] += a[:, neuron]
    return labels


def is_balanced(groups: Tensor, d_ff: int) -> bool:
    """Every neuron in exactly one expert, all experts the same size."""
    return groups.dim() == 2 and groups.numel() == d_ff and torch.equal(groups.flatten().sort().values,
                                                                         torch.arange(d_ff))
