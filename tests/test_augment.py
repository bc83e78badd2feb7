"""The CPU per-image augmentation and the batched GPU one draw from the same distribution and normalise identically."""
import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import reference_crop_flip, unnormalise
from kd_lightning.data.augment import (EvalTransform, TrainTransform, crop_flip, gpu_crop_flip, normalize,
                                       to_uint8_chw)

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
H = W = 8
PAD = 2
N = 4000
# 0.999 quantile of chi-square with 24 degrees of freedom (25 joint (oy, ox) cells): a fair sampler fails 1 in 1000
# seeds; a sampler missing one offset, or biased by 30% on one, lands far above it at N = 4000.
CHI2_24_999 = 51.18


def coded_image() -> torch.Tensor:
    """uint8 [3, H, W]: channel 0 holds row+1, channel 1 column+1 (0 only where padding shows), channel 2 a constant."""
    rows = torch.arange(H).view(H, 1).expand(H, W) + 1
    cols = torch.arange(W).view(1, W).expand(H, W) + 1
    return torch.stack([rows, cols, torch.full((H, W), 200)]).to(torch.uint8)


def recover(views: torch.Tensor):
    """(oy, ox, flip) of each augmented coded image [B, 3, H, W], read off its pixels.

    With padding 2 on 8x8, the output pixels (4, 3) and (4, 4) always show real pixels, whatever the crop.
    """
    centre_row = views[:, 0, 4, 4].long() - 1  # source row of output row 4
    centre_col = views[:, 1, 4, 4].long() - 1
    flip = views[:, 1, 4, 4] < views[:, 1, 4, 3]  # columns run backwards in a mirrored view
    oy = centre_row + PAD - 4
    ox = centre_col + PAD - torch.where(flip, torch.full_like(centre_col, W - 1 - 4), torch.full_like(centre_col, 4))
    return oy, ox, flip


def check_distribution(views: torch.Tensor) -> None:
    oy, ox, flip = recover(views)
    image = coded_image().numpy()
    for b in range(50):  # the recovered parameters explain every pixel, checked against the naive reference
        expected = reference_crop_flip(image, PAD, int(oy[b]), int(ox[b]), bool(flip[b]))
        np.testing.assert_array_equal(views[b].numpy(), expected)
    assert set(oy.tolist()) == set(range(2 * PAD + 1)) and set(ox.tolist()) == set(range(2 * PAD + 1))
    counts = torch.bincount(oy * (2 * PAD + 1) + ox, minlength=(2 * PAD + 1) ** 2).double()
    expected = N / (2 * PAD + 1) ** 2
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_24_999, f"crop offsets not uniform over 0..{2 * PAD}: chi2={chi2:.1f}, counts={counts.tolist()}"
    rate = flip.double().mean().item()
    assert abs(rate - 0.5) < 4 * (0.25 / N) ** 0.5, f"flip rate {rate}"


def test_crop_flip_exact_on_known_image():
    image = (torch.arange(3 * H * W) + 1).view(3, H, W).to(torch.uint8)
    cases = [(0, 0, False), (4, 4, False), (0, 4, True), (4, 0, True), (2, 2, False), (2, 2, True), (1, 3, True)]
    batch = image.expand(len(cases), 3, H, W)
    oy = torch.tensor([c[0] for c in cases])
    ox = torch.tensor([c[1] for c in cases])
    fl = torch.tensor([c[2] for c in cases])
    out = crop_flip(batch, PAD, oy, ox, fl)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    for b, (y, x, f) in enumerate(cases):
        np.testing.assert_array_equal(out[b].numpy(), reference_crop_flip(image.numpy(), PAD, y, x, f))
    # Spelled out once: offset (0, 0) shows two zero rows and columns on top/left, then the image's corner.
    assert out[0, 0, :2].eq(0).all() and out[0, 0, :, :2].eq(0).all() and out[0, 0, 2, 2] == 1
    # Centre offset without flip is the identity.
    assert torch.equal(out[4], image)


def test_gpu_crop_flip_distribution():
    gen = torch.Generator().manual_seed(0)
    views = gpu_crop_flip(coded_image().expand(N, 3, H, W), PAD, generator=gen)
    assert views.dtype == torch.uint8 and views.shape == (N, 3, H, W)
    check_distribution(views)


def test_cpu_transform_distribution():
    torch.manual_seed(0)
    transform = TrainTransform(H, PAD, MEAN, STD)
    image = coded_image()
    views = np.stack([unnormalise(transform(image).numpy(), MEAN, STD) for _ in range(N)])
    check_distribution(torch.from_numpy(views))


def test_gpu_crop_flip_reproducible_with_generator_and_independent_per_sample():
    batch = coded_image().expand(64, 3, H, W)
    a = gpu_crop_flip(batch, PAD, torch.Generator().manual_seed(3))
    b = gpu_crop_flip(batch, PAD, torch.Generator().manual_seed(3))
    c = gpu_crop_flip(batch, PAD, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(v.flatten().tolist()) for v in a}) > 10  # samples get their own draws
    with pytest.raises(ValueError):
        gpu_crop_flip(coded_image(), PAD)


def test_normalisation_by_hand_and_identical_on_both_paths():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8)
    cpu = EvalTransform(MEAN, STD)(image)
    batched = normalize(image.unsqueeze(0).repeat(4, 1, 1, 1), MEAN, STD)
    assert cpu.dtype == torch.float32
    for b in range(4):
        assert torch.equal(batched[b], cpu)
    for c, y, x in [(0, 0, 0), (1, 2, 3), (2, 4, 5)]:
        expected = (int(image[c, y, x]) / 255 - MEAN[c]) / STD[c]
        assert cpu[c, y, x].item() == pytest.approx(expected, abs=1e-6)
    # Padding 0 and a forced no-flip make the train transform pure normalisation: the same numbers again.
    train = TrainTransform(6, 0, MEAN, STD)
    train.crop_flip = lambda x: x  # isolate the normalisation step of the CPU train path
    assert torch.equal(train(image), cpu)


def test_to_uint8_chw_makes_three_channels():
    gray = Image.new("L", (4, 3), 77)
    out = to_uint8_chw(gray)
    assert out.shape == (3, 3, 4) and out.dtype == torch.uint8 and out.eq(77).all()
    assert to_uint8_chw(Image.new("RGBA", (2, 2), (1, 2, 3, 4))).shape == (3, 2, 2)
    assert to_uint8_chw(torch.zeros(1, 2, 2, dtype=torch.uint8)).shape == (3, 2, 2)
    with pytest.raises(TypeError):
        to_uint8_chw(torch.zeros(3, 2, 2))
