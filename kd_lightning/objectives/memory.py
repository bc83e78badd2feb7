"""The per-class memory of negatives ("pipeline caching", docs/method.md §4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from kd_lightning.exceptions import UserValueError


class ClassMemory(nn.Module):
    """A FIFO ring buffer per class holding the Q most recent (detached embedding, id); the label is the class slot.

    State lives in persistent buffers so that it is part of `state_dict`, hence of checkpoints, and resume restores it:
    `embeddings` [C, Q, D], `ids` [C, Q] (-1 in slots never written), `ptr` [C] (next slot to write per class) and
    `count` [C] (filled slots per class, at most Q). While a class is not yet full its entries occupy slots
    0..count-1; afterwards slot `ptr` holds its oldest entry.

    Under DDP the caller gathers the rows of all ranks before `enqueue`, so every rank holds the identical memory.

    Args:
        num_classes: C.
        dim: D, the embedding dimension.
        size_per_class: Q; 0 disables the memory (`bank` returns empty tensors, `enqueue` does nothing).
    """

    def __init__(self, num_classes: int, dim: int, size_per_class: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise UserValueError(f"num_classes must be >= 1, got num_classes={num_classes}")
        if dim < 1:
            raise UserValueError(f"dim must be >= 1, got dim={dim}")
        if size_per_class < 0:
            raise UserValueError(
                f"size_per_class must be >= 0 (0 disables the memory), got size_per_class={size_per_class}"
            )
        self.num_classes, self.dim, self.size_per_class = num_classes, dim, size_per_class
        self.register_buffer("embeddings", torch.zeros(num_classes, size_per_class, dim))
        self.register_buffer("ids", torch.full((num_classes, size_per_class), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, size_per_class={self.size_per_class}"

    @torch.no_grad()
    def enqueue(self, z: Tensor, labels: Tensor, ids: Tensor) -> None:
        """Append rows in order, each to its class's ring; a class seen more than Q times keeps its last Q rows.

        Vectorised and shape-static (no host sync): row r of class c with rank k among this call's rows of class c
        goes to slot (ptr[c] + k) mod Q. Several rows may map to one slot only when a class has more than Q rows;
        then the latest (highest row index) must win, which a scatter-amax of row indices per slot decides
        deterministically.
        """
        q = self.size_per_class
        if q == 0:
            return
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be [n, {self.dim}], got shape {tuple(z.shape)}")
        n, c = z.shape[0], self.num_classes
        if labels.shape != (n,) or ids.shape != (n,):
            raise ValueError(f"labels and ids must have shape [{n}], got {tuple(labels.shape)} and {tuple(ids.shape)}")
        device = self.embeddings.device
        z = z.detach().to(device=device, dtype=self.embeddings.dtype)
        labels, ids = labels.to(device), ids.to(device)

        onehot = F.one_hot(labels, c)  # [n, C]
        rank = (onehot.cumsum(dim=0) - 1).gather(1, labels[:, None]).squeeze(1)  # position within its class
        slot = labels * q + (self.ptr[labels] + rank) % q  # flat index into [C * Q]
        writer = torch.full((c * q,), -1, dtype=torch.long, device=device)
        writer.scatter_reduce_(0, slot, torch.arange(n, device=device), reduce="amax", include_self=True)
        written = writer >= 0
        source = writer.clamp(min=0)

        flat_z = self.embeddings.view(c * q, self.dim)
        flat_ids = self.ids.view(c * q)
        flat_z.copy_(torch.where(written[:, None], z[source], flat_z))
        flat_ids.copy_(torch.where(written, ids[source].to(flat_ids.dtype), flat_ids))
        per_class = onehot.sum(dim=0)
        self.ptr.copy_((self.ptr + per_class) % q)
        self.count.copy_((self.count + per_class).clamp(max=q))

    def bank(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every slot, flattened class-major: (embeddings [C*Q, D], labels [C*Q], ids [C*Q], valid [C*Q] bool).

        Shapes never change (CUDA-graph friendly); unfilled slots are marked invalid rather than removed.
        """
        c, q = self.num_classes, self.size_per_class
        device = self.embeddings.device
        labels = torch.arange(c, device=device).repeat_interleave(q)
        valid = (torch.arange(q, device=device)[None, :] < self.count[:, None]).reshape(c * q)
        return self.embeddings.reshape(c * q, self.dim), labels, self.ids.reshape(c * q), valid
