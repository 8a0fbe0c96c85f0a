import torch

from fedcifar.data.augment import Normalize, random_crop_flip
from fedcifar.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD


def _images(n=8):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)


def test_crop_flip_is_a_shifted_window_of_the_padded_image():
    x = _images()
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in candidates)


def test_crop_flip_is_reproducible_and_varies_between_draws():
    x = _images(64)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = sum(torch.equal(c[i], x[i].flip(-1)) for i in range(64))
    assert flipped < 64


def test_normalisation_constants_match_the_training_set(cifar):
    x = cifar.train_x.float() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR100_MEAN), atol=1e-3)
    assert torch.allclose(std, torch.tensor(CIFAR100_STD), atol=1e-3)
    z = Normalize()(cifar.train_x[:5000], torch.channels_last)
    assert z.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
