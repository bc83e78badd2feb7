"""OFD (docs/method.md, "OFD") against naive loops: the Gaussian margins and the partial L2 distance."""
from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.distillation.ofd import OFDLoss, gaussian_margin
from kd_lightning.models import create_model
from method_helpers import avg_pool_to, maps

pytestmark = pytest.mark.numeric


def phi_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def naive_margin(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(beta, gamma²), by numerical integration of x · density over x < 0."""
    s = abs(gamma)
    if phi_cdf(-beta / s) <= 0.001:
        return -3 * s
    step, total, mass = s / 2000, 0.0, 0.0
    x = -step / 2
    while x > beta - 12 * s:
        density = math.exp(-((x - beta) / s) ** 2 / 2) / (s * math.sqrt(2 * math.pi))
        total += x * density * step
        mass += density * step
        x -= step
    return total / mass


def test_margins_are_the_mean_negative_response():
    weight, bias = torch.tensor([1.0, 0.5, 2.0, 0.1]), torch.tensor([0.0, 0.3, -1.0, 0.5])
    want = [naive_margin(g, b) for g, b in zip(weight.tolist(), bias.tolist())]
    # tol: midpoint-rule integration over 2000 steps per σ: rel 1e-4
    assert gaussian_margin(weight, bias).tolist() == pytest.approx(want, rel=1e-4)
    assert want[3] == pytest.approx(-0.3)  # Φ(-5) < 0.001: three standard deviations (tol: float32 0.1)


def test_ofd_matches_the_naive_partial_l2():
    torch.manual_seed(0)
    loss = OFDLoss()
    loss.bind_features([torch.Size([2, 4, 4])] + [torch.Size([3, 4, 4]), torch.Size([2, 2, 2])],
                       [torch.Size([2, 4, 4])] + [torch.Size([4, 4, 4]), torch.Size([3, 4, 4])])
    for i, c in enumerate((4, 3)):
        loss.register_buffer(f"margin{i}", -torch.rand(c)[None, :, None, None])
    students = maps(1, [(3, 3, 4, 4), (3, 2, 2, 2)])
    teachers = maps(2, [(3, 4, 4, 4), (3, 3, 4, 4)])
    want = 0.0
    for i, (connect, s, t, m) in enumerate(zip(loss.connectors, students, teachers, loss.margins())):
        with torch.no_grad():
            s = connect(s).double()
        t = avg_pool_to(t, s.shape[-1])
        stage = 0.0
        b = s.shape[0]
        for idx in range(s.numel()):
            n, rest = divmod(idx, s[0].numel())
            c = rest // (s.shape[-1] * s.shape[-2])
            a, tv, mv = s.flatten()[idx].item(), t.flatten()[idx].item(), m.flatten()[c].item()
            if a > mv and tv <= mv:
                stage += (a - mv) ** 2
            elif a > tv and mv < tv <= 0:
                stage += (a - tv) ** 2
            elif tv > 0:
                stage += (a - tv) ** 2
        want += stage / b / 2 ** (1 - i)
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert loss(students, teachers).item() == pytest.approx(want, rel=1e-5)


def test_ofd_reads_the_teachers_batchnorms():
    teacher = create_model("resnet8", 5)
    torch.nn.init.normal_(teacher.stages[-1][-1].bn2.bias)
    loss = OFDLoss()
    loss.bind_features(create_model("resnet8", 5).intermediate_shapes(), teacher.intermediate_shapes())
    loss.bind_networks(create_model("resnet8", 5), teacher)
    bn = teacher.stages[-1][-1].bn2
    assert torch.equal(loss.margin2.flatten(), gaussian_margin(bn.weight.detach(), bn.bias.detach()))
    assert "margin2" in loss.state_dict()
