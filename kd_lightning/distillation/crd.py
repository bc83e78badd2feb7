"""Contrastive representation distillation (Tian et al., ICLR 2020; docs/method.md §5, "CRD").

The student's and the teacher's pooled embeddings go through linear heads to D = 128 and are L2-normalised. For an
anchor image i with embedding v and a memory row r_j (the other network's embedding of image j, crd_memory.py), the
score is P(i, j) = exp(v · r_j / τ) / Z. One positive (the image itself, j = i) and K negatives (other training
images) form a noise-contrastive estimation problem with noise distribution P_n = 1/N: the probability that a pair
is a real one is h = P / (P + K · P_n), and the loss is -(1/B) Σ_i [log h(i, i) + Σ_k log(1 - h(i, k))]. It is
computed both ways, student anchors against the teacher's memory and teacher anchors against the student's, and
summed.

Z is not learnt: at the first training step it is set to N times the mean of that batch's exp(v · r / τ) (per
direction) and then kept, as CRD does; it lives in the memory's buffers. The heads are trained with the student
(they are its parameters); the teacher network itself stays frozen.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.distillation.base import DistillationObjective, Outputs, check_positive
from kd_lightning.distillation.crd_memory import EmbeddingMemory
from kd_lightning.objectives.distributed import gather_batch
from kd_lightning.exceptions import UserValueError
from kd_lightning.distillation.registry import MethodCard, repdistiller_row

#: Added to the denominators of h and 1 - h as CRD's reference code does, so a vanishing score stays finite.
NCE_EPS = 1e-7


def nce_loss(scores: Tensor, num_samples: int) -> Tensor:
    """-(1/B) Σ_i [log h(pos_i) + Σ_k log(1 - h(neg_ik))] for normalised scores P [B, 1 + K], column 0 positive."""
    noise = (scores.shape[1] - 1) / num_samples  # K · P_n
    log_real = torch.log(scores[:, 0] / (scores[:, 0] + noise + NCE_EPS))
    log_noise = torch.log(noise / (scores[:, 1:] + noise + NCE_EPS))
    return -(log_real.sum() + log_noise.sum()) / scores.shape[0]


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CRDLoss(DistillationObjective):
    """CRD's two-way NCE over a memory of every training image (module docstring); weight 0.8 beside CE 1.

    Args:
        feat_dim: D, the size of the embedding heads (CRD: 128).
        num_negatives: K negatives per anchor (CRD: 16384), drawn uniformly with replacement from the other
            training images, so K may exceed the train set.
        temperature: τ (CRD: 0.07).
        momentum: of the memory update (CRD: 0.5).
        num_samples: N, the number of training images (memory rows). null: taken from the datamodule's train set
            when fitting; a number is checked against it.
        seed: of the memory's initial rows and of every step's negatives. null: the run's `seed_everything`.
    """

    supports_fast_path = False  # a per-step generator and a memory update outside the captured graph

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        num_samples: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__()
        if num_negatives < 1:
            raise UserValueError(f"num_negatives must be >= 1, got num_negatives={num_negatives}; use e.g. 16384")
        self.feat_dim, self.num_negatives = feat_dim, num_negatives
        self.temperature = check_positive("temperature", temperature, "0.07")
        self.num_samples, self.seed = num_samples, seed
        self.memory = EmbeddingMemory(feat_dim, momentum)
        self.embed_student: Optional[nn.Linear] = None
        self.embed_teacher: Optional[nn.Linear] = None
        self._pending: Optional[tuple[Tensor, Tensor, Tensor]] = None
        self._checked = self._normalised = False
        if num_samples is not None:
            self.bind_train_set(num_samples)

    def extra_repr(self) -> str:
        return (f"feat_dim={self.feat_dim}, num_negatives={self.num_negatives}, temperature={self.temperature}, "
                f"num_samples={self.num_samples}")

    # --- what the student calls ------------------------------------------------------------------------------------
    def bind(self, student_dim: int, teacher_dim: int) -> None:
        self.embed_student = nn.Linear(student_dim, self.feat_dim)
        self.embed_teacher = nn.Linear(teacher_dim, self.feat_dim)

    def bind_train_set(self, num_samples: int) -> None:
        if self.num_samples is not None and num_samples != self.num_samples:
            raise UserValueError(
                f"model.distillation.init_args.num_samples={self.num_samples} but the train set has {num_samples} "
                "images; leave num_samples null to take it from the data"
            )
        if self.memory.num_samples == num_samples:
            return  # already sized (and perhaps filled from a checkpoint)
        # The run's seed is the same on every DDP rank (seed_everything exports it before the ranks start).
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.memory.resize(num_samples, seed)
        self._checked = self._normalised = False

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.pooled, teacher.pooled, ids)

    def after_optimizer_step(self) -> None:
        # After the update, as CRD does inside its forward: this step's scores used the memory before this batch.
        if self._pending is not None:
            self.memory.update(*gather_batch(*self._pending))  # every rank's rows, rank order: one memory everywhere
        self._pending = None

    # --- the loss ----------------------------------------------------------------------------------------------------
    def embed(self, student_pooled: Tensor, teacher_pooled: Tensor) -> tuple[Tensor, Tensor]:
        """The L2-normalised head outputs (v_s, v_t), [B, D] each, float32."""
        if self.embed_student is None or self.embed_teacher is None:
            raise RuntimeError("CRDLoss.bind(student_dim, teacher_dim) must build its heads before the first call")
        with torch.autocast(device_type=student_pooled.device.type, enabled=False):
            v_s = F.normalize(self.embed_student(student_pooled.float()), dim=1)
            v_t = F.normalize(self.embed_teacher(teacher_pooled.detach().float()), dim=1)
        return v_s, v_t

    def forward(self, student_pooled: Tensor, teacher_pooled: Tensor, ids: Tensor,
                negatives: Optional[Tensor] = None) -> Tensor:
        """The CRD loss of a batch; in training mode it also stages the memory update of `after_optimizer_step`.

        Args:
            student_pooled, teacher_pooled: [B, D_s] and [B, D_t] pooled embeddings.
            ids: [B] dataset indices of the images (the positives' memory rows).
            negatives: [B, K] memory rows to contrast with; None draws them (`EmbeddingMemory.negatives`).
        """
        n = self.memory.num_samples
        if n == 0:
            raise UserValueError("CRD's memory is not sized: the datamodule has no train_set to count, so set "
                             "model.distillation.init_args.num_samples to the number of training images")
        if student_pooled.dim() != 2 or teacher_pooled.dim() != 2 or ids.shape != (student_pooled.shape[0],) \
                or teacher_pooled.shape[0] != student_pooled.shape[0]:
            raise ValueError(f"CRD expects pooled embeddings [B, D_s], [B, D_t] and ids [B], got "
                             f"{tuple(student_pooled.shape)}, {tuple(teacher_pooled.shape)} and {tuple(ids.shape)}")
        if not self._checked:  # one host read per process: a wrong num_samples would index past the memory
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= n:
                raise ValueError(f"a batch holds dataset id {high if high >= n else low} but CRD's memory has {n} "
                                 "rows (the train set's size): leave model.distillation.init_args.num_samples null")
            self._checked = True
        v_s, v_t = self.embed(student_pooled, teacher_pooled)
        rank, world = _rank_and_world()
        b = ids.shape[0]
        if negatives is None:
            negatives = self.memory.negatives(ids, self.num_negatives, offset=rank * b, global_rows=world * b)
        rows = torch.cat([ids[:, None], negatives], dim=1)  # [B, 1 + K], column 0: the positive
        with torch.autocast(device_type=v_s.device.type, enabled=False):
            # v · every memory row, then the B(1+K) entries needed: cheaper than gathering [B, 1+K, D] rows.
            exp_s = torch.exp((v_s @ self.memory.teacher.T).gather(1, rows) / self.temperature)
            exp_t = torch.exp((v_t @ self.memory.student.T).gather(1, rows) / self.temperature)
            z = self._normalisers(exp_s, exp_t, n)
            loss = nce_loss(exp_s / z[0], n) + nce_loss(exp_t / z[1], n)
        if self.training:
            self._pending = (ids, v_s.detach(), v_t.detach())
        return loss

    def _normalisers(self, exp_s: Tensor, exp_t: Tensor, n: int) -> Tensor:
        """Z per direction: N · mean score of the first training batch (of the global batch under DDP), then fixed."""
        z = self.memory.normalisers
        # Read back once per process (a resumed run finds them set); every rank decides alike, its buffers being equal.
        if self.training and not self._normalised:
            if bool((z < 0).any()):
                fresh = torch.stack([exp_s.mean(), exp_t.mean()]).detach()[None, :]
                z.copy_(gather_batch(fresh)[0].mean(dim=0) * n)  # equal shards: the mean of means is the global one
            self._normalised = True
        return z


CARD = MethodCard(
    name="crd", label="CRD", order=30, overlay="configs/student/crd.yaml",
    paper="Tian, Krishnan and Isola, ICLR 2020, Contrastive Representation Distillation",
    code="HobbitLong/RepDistiller train_student.py (--distill crd -a 0 -b 0.8), crd/criterion.py, crd/memory.py",
    published=repdistiller_row((75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94)),
)
