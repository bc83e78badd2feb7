"""VID (docs/method.md, "VID") against a naive loop over the Gaussian negative log-likelihood."""
from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.distillation.vid import VIDLoss
from method_helpers import avg_pool_to, maps, mean

pytestmark = pytest.mark.numeric


def naive_stage(stage, s: torch.Tensor, t: torch.Tensor) -> float:
    if s.shape[-1] > t.shape[-1]:
        s = avg_pool_to(s, t.shape[-1])
    w = [conv.weight.detach().double()[:, :, 0, 0] for conv in stage.regressor if isinstance(conv, torch.nn.Conv2d)]
    var = [math.log1p(math.exp(a)) + stage.eps for a in stage.log_scale.tolist()]
    terms = []
    b, _, h, _ = s.shape
    for n in range(b):
        for u in range(h):
            for v in range(h):
                x = s.double()[n, :, u, v]
                mu = w[2] @ (w[1] @ (w[0] @ x).clamp(min=0)).clamp(min=0)  # 1x1 convs at one position
                for c in range(len(var)):
                    terms.append(0.5 * ((float(t[n, c, u, v]) - float(mu[c])) ** 2 / var[c] + math.log(var[c])))
    return mean(terms)


def test_vid_matches_the_naive_loop_and_starts_at_the_initial_variance():
    torch.manual_seed(0)
    loss = VIDLoss(init_variance=5.0)
    loss.bind_features([torch.Size([1, 4, 4]), torch.Size([3, 4, 4]), torch.Size([2, 4, 4])],
                       [torch.Size([1, 4, 4]), torch.Size([4, 4, 4]), torch.Size([5, 2, 2])])
    # tol: softplus(softplus⁻¹(5 - ε)) + ε in float32: a few ulps of 5
    torch.testing.assert_close(loss.stages[0].variance(), torch.full((4,), 5.0), rtol=1e-6, atol=0)
    with torch.no_grad():
        loss.stages[1].log_scale.copy_(torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0]))  # unequal variances
    students = maps(1, [(2, 3, 4, 4), (2, 2, 4, 4)], relu=True)
    teachers = maps(2, [(2, 4, 4, 4), (2, 5, 2, 2)])
    want = sum(naive_stage(stage, s, t) for stage, s, t in zip(loss.stages, students, teachers))
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert loss(students, teachers).item() == pytest.approx(want, rel=1e-5)
