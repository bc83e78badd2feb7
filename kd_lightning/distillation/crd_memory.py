"""CRD's memory: a momentum-averaged embedding of every training image, for the student and for the teacher.

Everything lives in persistent buffers, so checkpoints carry it and a resumed run continues from the same memory:
`student` and `teacher` [N, D] (row i: image i of the train set), `normalisers` [2] (the NCE normalisation constants
Z, -1 until the first training step sets them), `step` (updates so far: it keys the negatives of the next step) and
`seed`. The memory starts at 0 rows and is sized for the train set by `resize`; a checkpoint's memory is adopted
when loaded into an unsized one (`kd-lightning test --ckpt_path ...`).

Under DDP the caller passes every rank's rows to `update` in rank order, and the initial rows and the negatives are
drawn from `seed`, so every rank holds the identical memory without any broadcast.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from kd_lightning.exceptions import UserValueError


class EmbeddingMemory(nn.Module):
    """One row per training image for the student's and the teacher's L2-normalised embeddings.

    Args:
        dim: D, the embedding size (CRD: 128).
        momentum: m in row <- normalise(m · row + (1 - m) · new) (CRD: 0.5).
    """

    def __init__(self, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        if dim < 1:
            raise UserValueError(f"the CRD embedding size must be >= 1, got feat_dim={dim}")
        if not 0 <= momentum < 1:
            raise UserValueError(f"momentum must be in [0, 1), got momentum={momentum!r}; use e.g. momentum=0.5")
        self.dim, self.momentum = dim, float(momentum)
        self.register_buffer("student", torch.zeros(0, dim))
        self.register_buffer("teacher", torch.zeros(0, dim))
        self.register_buffer("normalisers", torch.full((2,), -1.0))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("seed", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"rows={self.num_samples}, dim={self.dim}, momentum={self.momentum}"

    @property
    def num_samples(self) -> int:
        return self.student.shape[0]

    def resize(self, num_samples: int, seed: int) -> None:
        """N rows drawn uniformly from [-s, s], s = 1/sqrt(D/3) (rows of norm about 1, as CRD starts), from `seed`."""
        if num_samples < 2:
            raise UserValueError(f"CRD needs a train set of at least 2 images (one positive, other negatives), got "
                             f"{num_samples}")
        device = self.student.device
        gen = torch.Generator().manual_seed(int(seed))
        bound = 1.0 / math.sqrt(self.dim / 3.0)
        rows = [(torch.rand(num_samples, self.dim, generator=gen) * 2 - 1) * bound for _ in range(2)]
        self.student, self.teacher = (r.to(device) for r in rows)
        self.normalisers = torch.full((2,), -1.0, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.seed = torch.tensor(int(seed), dtype=torch.long, device=device)

    def negatives(self, ids: Tensor, k: int, offset: int = 0, global_rows: int | None = None) -> Tensor:
        """K dataset indices per anchor [B, K], uniform over the other N - 1 images, with replacement.

        Drawn for the whole global batch (`global_rows` anchors, this rank's starting at `offset`) from a generator
        keyed by (seed, step): one process and W DDP processes draw the same negatives for the same global batch,
        and a resumed run draws what the uninterrupted run would have. With replacement, K may exceed N.
        """
        n, b = self.num_samples, ids.shape[0]
        rows = b if global_rows is None else global_rows
        gen = torch.Generator(device=ids.device)
        gen.manual_seed(int((self.seed * 1_000_003 + self.step).item()))  # one host read per step
        draw = torch.randint(0, n - 1, (rows, k), generator=gen, device=ids.device)[offset:offset + b]
        # Skip the anchor's own index: u in [0, N-1) maps onto [0, N) \ {id}.
        return draw + (draw >= ids[:, None]).long()

    @torch.no_grad()
    def update(self, ids: Tensor, student: Tensor, teacher: Tensor) -> None:
        """row[id] <- normalise(m · row[id] + (1 - m) · new) for both memories, then step += 1.

        An image twice in one update (DistributedSampler pads an epoch's last batches with repeats) takes its last
        row's embedding, so every rank writes the same value whatever order the kernel writes duplicates in.
        """
        ids = ids.to(self.student.device)
        order = torch.arange(ids.shape[0], device=ids.device)
        last = torch.full((self.num_samples,), -1, dtype=torch.long, device=ids.device)
        last.scatter_reduce_(0, ids, order, reduce="amax", include_self=True)
        source = last[ids]
        m = self.momentum
        for memory, new in ((self.student, student), (self.teacher, teacher)):
            new = new.detach().to(memory.device, memory.dtype)[source]
            memory.index_copy_(0, ids, F.normalize(m * memory[ids] + (1 - m) * new, dim=1))
        self.step += 1

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # An unsized memory takes the checkpoint's size (testing a checkpoint needs no train set); a sized one must
        # match it, or the checkpoint comes from a run on another train set.
        incoming = state_dict.get(prefix + "student")
        if incoming is not None and tuple(incoming.shape) != tuple(self.student.shape):
            if self.num_samples and incoming.shape[0] != self.num_samples:
                raise UserValueError(
                    f"the checkpoint's CRD memory has {incoming.shape[0]} rows but this run's train set has "
                    f"{self.num_samples} images: resume or test a CRD student on the train set it was trained on"
                )
            device = self.student.device
            self.student = torch.zeros_like(incoming, device=device)
            self.teacher = torch.zeros_like(incoming, device=device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
