"""ReviewKD (docs/method.md, "ReviewKD") against naive loops: the hierarchical context loss, and the fusion."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.reviewkd import ReviewKDLoss, hcl
from method_helpers import avg_pool_to, maps, mean

pytestmark = pytest.mark.numeric


def naive_hcl(s: torch.Tensor, t: torch.Tensor) -> float:
    sq = lambda a, b: mean((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist()))  # noqa: E731
    loss, weight, total = sq(s, t), 1.0, 1.0
    for size in (4, 2, 1):
        if size < s.shape[-1] and s.shape[-1] % size == 0:
            weight /= 2
            loss += weight * sq(avg_pool_to(s, size), avg_pool_to(t, size))
            total += weight
    return loss / total


@pytest.mark.parametrize("side", [8, 4, 2, 1])
def test_hcl_matches_the_naive_loop(side):
    s, t = maps(side, [(2, 3, side, side), (2, 3, side, side)])
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert hcl(s, t).item() == pytest.approx(naive_hcl(s, t), rel=1e-5)


def test_levels_fuse_deepest_first_into_the_teachers_layout():
    torch.manual_seed(0)
    loss = ReviewKDLoss()
    loss.bind(6, 7)
    loss.bind_features([torch.Size([2, 4, 4]), torch.Size([3, 4, 4]), torch.Size([5, 2, 2])],
                       [torch.Size([2, 4, 4]), torch.Size([4, 8, 8]), torch.Size([6, 4, 4])])
    assert [abf.output[0].out_channels for abf in loss.abfs] == [7, 6, 4]  # deepest (pooled) level first
    assert loss.abfs[0].attention is None and loss.abfs[1].attention is not None
    s = maps(1, [(2, 3, 4, 4), (2, 5, 2, 2), (2, 6, 1, 1)])
    t = maps(2, [(2, 4, 8, 8), (2, 6, 4, 4), (2, 7, 1, 1)])
    with torch.no_grad():
        want, residual = 0.0, None
        for abf, x, target in zip(loss.abfs, reversed(s), reversed(t)):
            x = abf.reduce(x)
            if residual is not None:  # nearest upsampling by an integer factor: repeat each entry
                k = x.shape[-1] // residual.shape[-1]
                up = residual.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
                a = abf.attention(torch.cat([x, up], dim=1))
                x = x * a[:, :1] + up * a[:, 1:]
            k = target.shape[-1] // x.shape[-1]
            x = x.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
            residual = x
            want += naive_hcl(abf.output(x), target)
        # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
        assert loss(s, t).item() == pytest.approx(want, rel=1e-5)
