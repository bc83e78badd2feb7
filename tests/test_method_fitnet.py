"""FitNet (docs/method.md, "FitNet") against a naive loop: conv-BN-ReLU regressor, then the mean squared error."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.distillation.fitnet import FitNetLoss
from method_helpers import maps, mean

pytestmark = pytest.mark.numeric


def naive_regressor(loss: FitNetLoss, x: torch.Tensor) -> torch.Tensor:
    """conv 3x3 (padding 1, bias), BatchNorm with the batch's statistics (training mode), ReLU, in float64 loops."""
    conv, bn = loss.regressor[0], loss.regressor[1]
    w, b = conv.weight.double(), conv.bias.double()
    x = F.pad(x.double(), (1, 1, 1, 1))
    n, _, h, _ = x.shape
    out = torch.zeros(n, w.shape[0], h - 2, h - 2, dtype=torch.float64)
    for i in range(h - 2):
        for j in range(h - 2):
            patch = x[:, :, i:i + 3, j:j + 3]  # [n, c_in, 3, 3]
            out[:, :, i, j] = torch.einsum("nchw,ochw->no", patch, w) + b
    mu = out.mean(dim=(0, 2, 3), keepdim=True)
    var = ((out - mu) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # biased, as BatchNorm normalises with
    y = (out - mu) / torch.sqrt(var + bn.eps) * bn.weight.double()[None, :, None, None] + bn.bias.double()[None, :, None, None]
    return y.clamp(min=0)


def test_fitnet_is_the_mean_squared_error_of_the_regressed_hint():
    torch.manual_seed(0)
    loss = FitNetLoss(hint_layer=1)
    loss.bind_features([torch.Size([3, 4, 4]), torch.Size([5, 4, 4])], [torch.Size([2, 4, 4]), torch.Size([6, 4, 4])])
    s, t = maps(1, [(3, 5, 4, 4), (3, 6, 4, 4)])
    torch.nn.init.normal_(loss.regressor[1].weight)  # a BatchNorm that is not the identity
    torch.nn.init.normal_(loss.regressor[1].bias)
    r = naive_regressor(loss, s)
    want = mean((a - b) ** 2 for a, b in zip(r.flatten().tolist(), t.flatten().tolist()))
    # tol: float32 convolution and BatchNorm vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert loss(s, t).item() == pytest.approx(want, rel=1e-5)


def test_fitnet_regressor_shapes_follow_the_resolutions_and_the_hint_is_checked():
    loss = FitNetLoss(hint_layer=0)
    loss.bind_features([torch.Size([8, 16, 16])], [torch.Size([4, 8, 8])])
    assert loss.regressor[0].stride == (2, 2) and loss.regressor[0].out_channels == 4
    loss.bind_features([torch.Size([8, 8, 8])], [torch.Size([4, 16, 16])])
    assert isinstance(loss.regressor[0], torch.nn.ConvTranspose2d)
    with pytest.raises(ValueError, match="only equal, double or half"):
        loss.bind_features([torch.Size([8, 8, 8])], [torch.Size([4, 3, 3])])
    with pytest.raises(ValueError, match="hint_layer=3 but the networks have 2 intermediates"):
        FitNetLoss(hint_layer=3).bind_features([torch.Size([1, 2, 2])] * 2, [torch.Size([1, 2, 2])] * 2)
    with pytest.raises(ValueError, match="hint_layer must be >= 0"):
        FitNetLoss(hint_layer=-1)
