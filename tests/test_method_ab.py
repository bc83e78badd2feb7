"""AB (docs/method.md, "AB") against a naive loop over the boundary loss, and what its phases train."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.ab import ABLoss
from kd_lightning.distillation.base import Outputs
from method_helpers import maps

pytestmark = pytest.mark.numeric


def naive_ab(students, teachers, margin):
    n, batch = len(students), students[0].shape[0]
    total = 0.0
    for i, (s, t) in enumerate(zip(students, teachers)):
        stage = 0.0
        for a, b in zip(s.flatten().tolist(), t.flatten().tolist()):
            if a > -margin and b <= 0:
                stage += (a + margin) ** 2
            if a <= margin and b > 0:
                stage += (a - margin) ** 2
        total += 2.0 ** (i - n + 1) * stage
    return total / batch * 3 / 1000


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_the_naive_loop(margin):
    loss = ABLoss(margin=margin, init_epochs=1)
    shapes = [torch.Size([2, 4, 4]), torch.Size([3, 4, 4]), torch.Size([4, 2, 2])]
    loss.bind_features(shapes, shapes)  # equal shapes: identity connectors
    students = maps(0, [(3, 3, 4, 4), (3, 4, 2, 2)])
    teachers = maps(1, [(3, 3, 4, 4), (3, 4, 2, 2)])
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert loss.boundaries(students, teachers).item() == pytest.approx(naive_ab(students, teachers, margin), rel=1e-5)


def test_ab_connects_other_shapes_and_student_training_is_ce_alone():
    torch.manual_seed(0)
    loss = ABLoss(init_epochs=2)
    loss.bind_features([torch.Size([2, 4, 4]), torch.Size([3, 4, 4])], [torch.Size([2, 4, 4]), torch.Size([5, 4, 4])])
    assert loss.pre_phase_epochs == 2 and isinstance(loss.connectors[0][0], torch.nn.Conv2d)
    s, t = maps(2, [(2, 3, 4, 4), (2, 5, 4, 4)])
    out = lambda f: Outputs(torch.zeros(2, 1), torch.zeros(2, 1), (f, f))  # noqa: E731
    connected = loss.connectors[0](s)
    # tol: the same float32 operations
    assert loss.pre_phase_loss(out(s), out(t)).item() == pytest.approx(naive_ab([connected], [t], 1.0), rel=1e-5)
    assert loss.distill(out(s), out(t), torch.zeros(2), torch.zeros(2)).item() == 0.0
    with pytest.raises(ValueError, match="init_epochs must be >= 1"):
        ABLoss(init_epochs=0)
