"""FT (docs/method.md, "FT") against naive loops: the paraphraser's reconstruction error in the pre-phase, the
L1 distance of the normalised factor energies after it; and which parts each phase trains."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.base import Outputs
from kd_lightning.distillation.ft import FTLoss
from method_helpers import avg_pool_to, l2_normalised, maps, mean

pytestmark = pytest.mark.numeric


def naive_energy(x: torch.Tensor, i: int) -> list[float]:
    c, h, w = x.shape[1:]
    return l2_normalised([sum(float(x[i, k, u, v]) ** 2 for k in range(c)) / c for u in range(h) for v in range(w)])


def bound_ft() -> FTLoss:
    torch.manual_seed(0)
    loss = FTLoss(rate=0.5, init_epochs=2)
    loss.bind_features([torch.Size([3, 4, 4])], [torch.Size([4, 2, 2])])
    return loss


def test_ft_losses_match_the_naive_loops():
    loss = bound_ft()
    s, t = maps(1, [(3, 3, 4, 4), (3, 4, 2, 2)], relu=True)
    with torch.no_grad():
        rec = loss.decoder(loss.encoder(t)).double()
        factor_s = avg_pool_to(loss.translator(s), 2)  # the student's 4x4 factors pooled to the teacher's 2x2
        factor_t = loss.encoder(t)
    want_pre = mean((a - b) ** 2 for a, b in zip(rec.flatten().tolist(), t.flatten().tolist()))
    want = mean(abs(a - b) for i in range(3) for a, b in zip(naive_energy(factor_s, i), naive_energy(factor_t, i)))
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert loss.reconstruction(t).item() == pytest.approx(want_pre, rel=1e-5)
    loss.translator.train()  # BatchNorm as in training (the naive factors above used the same batch statistics)
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert loss(s, t).item() == pytest.approx(want, rel=1e-5)


def test_the_pre_phase_trains_the_paraphraser_and_student_training_the_translator_only():
    loss = bound_ft()
    assert loss.pre_phase_epochs == 2
    s, t = maps(2, [(3, 3, 4, 4), (3, 4, 2, 2)], relu=True)
    outputs = lambda f: Outputs(torch.zeros(3, 1), torch.zeros(3, 1), (f,))  # noqa: E731
    loss.pre_phase_loss(outputs(s), outputs(t)).backward()
    assert all(p.grad is not None for p in (*loss.encoder.parameters(), *loss.decoder.parameters()))
    assert all(p.grad is None for p in loss.translator.parameters())
    loss.zero_grad(set_to_none=True)
    loss.distill(outputs(s), outputs(t), torch.zeros(3), torch.zeros(3)).backward()
    assert all(p.grad is None for p in (*loss.encoder.parameters(), *loss.decoder.parameters()))
    assert all(p.grad is not None for p in loss.translator.parameters())
