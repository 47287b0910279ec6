"""Batched on-device augmentation: shapes, range, per-sample randomness, and the crop arithmetic."""
import torch
import torch.nn.functional as F

import augment


def batch(n=64, c=3, size=32):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_shapes_and_range():
    for kind, size in (('padcrop', 28), ('rrc', 96)):
        x = batch(size=size)
        y = augment.augment(x, kind)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert y.min() >= 0 and y.max() <= 255


def test_each_sample_gets_its_own_crop_and_flip():
    torch.manual_seed(0)
    x = batch(1).expand(64, -1, -1, -1).contiguous()                    # 64 copies of one image
    for kind in ('padcrop', 'rrc'):
        y = augment.augment(x, kind)
        distinct = {tuple(v.flatten()[:64].tolist()) for v in y}
        assert len(distinct) > 20, kind                                    # not one transform for the batch
        assert not torch.equal(augment.augment(x, kind), y)                # and new ones every call


def test_padcrop_equals_reflect_pad_then_crop():
    """The gather-based crop must be exactly F.pad(reflect) + crop + flip."""
    torch.manual_seed(1)
    x = batch(256, 1, 28)
    y = augment.pad_crop_flip(x, pad=3)
    padded = F.pad(x.float(), (3, 3, 3, 3), mode='reflect')
    for i in range(256):
        candidates = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(7) for dx in range(7)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.equal(y[i], c) for c in candidates), i


def test_auto_choice_and_none():
    assert augment.choose('auto', 28) == 'padcrop' and augment.choose('auto', 96) == 'rrc'
    x = batch(4)
    assert torch.equal(augment.augment(x, 'none'), x.float())
