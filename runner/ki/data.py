"""Training masks that do not depend on the global RNG.

The MLM collator draws masks from torch's global generator. A run resumed from a checkpoint then masks
its later batches differently from the uninterrupted run (the Trainer moves the global RNG while it skips
the batches already consumed), and its curve ends elsewhere. Here each training batch is masked with a
generator seeded by (run seed, the batch's token ids): a resumed run masks every batch exactly as the
uninterrupted one did, and two runs of one seed that see the same batches (the scratch and KI students)
see the same masks. A block still gets new masks every epoch, as its batch companions change with the
shuffle. Evaluation batches (with labels: runner.tasks.collators.fixed_masks) are only padded.
"""

from __future__ import annotations

import hashlib

import torch

from runner.tasks.collators import MaskingCollator


class SeededMasking:
    def __init__(self, tokenizer, mlm_probability: float, seed: int):
        self.collate = MaskingCollator(tokenizer, mlm_probability)
        self.key = str(seed).encode()

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if "labels" not in features[0]:
            self.collate.mask.generator = torch.Generator().manual_seed(batch_seed(features, self.key))
        return self.collate(features)


def batch_seed(features: list[dict], key: bytes) -> int:
    """A 63-bit seed from the key and the batch's token ids, row by row."""
    digest = hashlib.blake2b(key=key, digest_size=8)
    for f in features:
        digest.update(torch.as_tensor(f["input_ids"], dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return int.from_bytes(digest.digest(), "little") >> 1
