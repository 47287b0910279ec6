"""Batched on-device augmentation: shapes, range, per-sample randomness, and the crop arithmetic; CutOut,
RandAugment (each op against torchvision's) and AugMix."""
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF, InterpolationMode

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


# ---- CutOut, RandAugment, AugMix ----------------------------------------------------------------------------
OPS = augment.RANDAUGMENT_OPS
PHOTOMETRIC_TOLERANCE = 1e-3 * 255  # torchvision works on [0, 1] floats, we on [0, 255]
GEOMETRIC_AGREEMENT = 0.97  # nearest-neighbour ties at pixel boundaries may round the other way


@pytest.fixture
def one_thread():
    """The new tests run on one thread: on a machine whose cores are busy, two threads wait on each other at
    every op, which makes these many small ops tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures('one_thread')
def test_cutout_zeroes_one_clipped_square_per_image():
    torch.manual_seed(0)
    h, w = 20, 24
    x = torch.full((256, 3, h, w), 255, dtype=torch.uint8)
    for size in (7, 8):
        y = augment.cutout(x, size)
        assert y.dtype == torch.float32 and y.shape == x.shape
        hole = y == 0
        assert torch.equal(hole, hole[:, :1].expand_as(hole)) and (y[~hole] == 255).all()   # all channels, only 0
        rows, cols = hole[:, 0].any(2), hole[:, 0].any(1)                                     # n x h, n x w
        assert torch.equal(hole[:, 0], rows[:, :, None] & cols[:, None, :])                   # one rectangle
        spans = []
        for mask, side in ((rows, h), (cols, w)):
            first = mask.float().argmax(1)
            last = side - 1 - mask.flip(1).float().argmax(1)
            extent = mask.sum(1)
            assert torch.equal(extent, last - first + 1)                                      # contiguous
            clipped = (first == 0) | (last == side - 1)
            assert ((extent == size) | (clipped & (extent < size))).all()                    # square or cut by a border
            assert extent.min() >= size - size // 2 and (extent < size).any() and (extent == size).any()
            spans.append(first)
        assert len(set(zip(spans[0].tolist(), spans[1].tolist()))) > 100                      # each image its own


@pytest.mark.usefixtures('one_thread')
def test_cutout_size_zero_is_identity():
    x = batch(8)
    assert torch.equal(augment.cutout(x, 0), x.float())


def torchvision_op(image, name, magnitude):
    """One op on one uint8 image with torchvision's functional ops, as its RandAugment calls them (float [0, 1]
    images, except Posterize, Solarize and Equalize, whose results torchvision defines on uint8 data), in 0..255."""
    f = image.float() / 255
    nearest = InterpolationMode.NEAREST
    if name == 'ShearX':
        out = TF.affine(f, 0.0, [0, 0], 1.0, [math.degrees(math.atan(magnitude)), 0.0], nearest, center=[0, 0])
    elif name == 'ShearY':
        out = TF.affine(f, 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(magnitude))], nearest, center=[0, 0])
    elif name == 'TranslateX':
        out = TF.affine(f, 0.0, [int(magnitude), 0], 1.0, [0.0, 0.0], nearest)
    elif name == 'TranslateY':
        out = TF.affine(f, 0.0, [0, int(magnitude)], 1.0, [0.0, 0.0], nearest)
    elif name == 'Rotate':
        out = TF.rotate(f, magnitude, nearest)
    elif name in ('Brightness', 'Color', 'Contrast', 'Sharpness'):
        adjust = {'Brightness': TF.adjust_brightness, 'Color': TF.adjust_saturation,
                  'Contrast': TF.adjust_contrast, 'Sharpness': TF.adjust_sharpness}[name]
        out = adjust(f, 1.0 + magnitude)
    elif name == 'AutoContrast':
        out = TF.autocontrast(f)
    elif name == 'Posterize':
        return TF.posterize(image, int(magnitude)).float()
    elif name == 'Solarize':
        return TF.solarize(image, magnitude).float()
    elif name == 'Equalize':
        return TF.equalize(image).float()
    else:
        out = f
    return out * 255


@pytest.mark.usefixtures('one_thread')
@pytest.mark.parametrize('channels', (3, 1))
def test_each_op_matches_torchvision(channels):
    """apply_ops with one op for the whole batch equals torchvision's op on each image: exactly (up to float
    rounding) for the photometric ops, on nearly every pixel for the geometric ones. Non-square images with
    whole pixel values (what Posterize and Equalize see on uint8 data)."""
    g = torch.Generator().manual_seed(1)
    low = torch.randint(0, 100, (4, channels, 1, 1), generator=g)       # each channel its own range, so that
    high = torch.randint(150, 256, (4, channels, 1, 1), generator=g)    # AutoContrast and Equalize have work to do
    x = (low + torch.rand(4, channels, 20, 24, generator=g) * (high - low)).to(torch.uint8)
    bins = torch.tensor([30, 9, 17, 2])
    negative = torch.tensor([False, True, False, True])
    for k, name in enumerate(OPS):
        op = torch.full((4,), k)
        magnitude = augment.randaugment_magnitude(op, bins, negative, 20, 24)
        y = augment.apply_ops(x, op, magnitude)
        assert y.dtype == torch.float32 and y.shape == x.shape
        for i in range(4):
            expected = torchvision_op(x[i], name, float(magnitude[i]))
            close = (y[i] - expected).abs() <= PHOTOMETRIC_TOLERANCE
            if name in augment.GEOMETRIC_OPS:
                assert close.float().mean() >= GEOMETRIC_AGREEMENT, (name, i)
            else:
                assert close.all(), (name, i)


@pytest.mark.usefixtures('one_thread')
def test_apply_ops_gives_each_image_its_own_op():
    """A batch mixing all ops equals the one-op batches row by row (the per-image selection)."""
    x = torch.randint(0, 256, (28, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)).float()
    op = torch.arange(28) % len(OPS)
    magnitude = augment.randaugment_magnitude(op, torch.full((28,), 20), torch.arange(28) % 3 == 0, 16, 16)
    y = augment.apply_ops(x, op, magnitude)
    for k in range(len(OPS)):
        rows = op == k
        assert torch.equal(y[rows], augment.apply_ops(x[rows], op[rows], magnitude[rows])), OPS[k]
    assert torch.equal(y[op == 0], x[op == 0])                                     # Identity leaves them exactly


@pytest.mark.usefixtures('one_thread')
def test_randaugment_magnitudes_are_torchvisions():
    space = getattr(T.RandAugment, '_AUGMENTATION_SPACE', None)
    if space is None:
        pytest.skip("this torchvision has no RandAugment._AUGMENTATION_SPACE")
    assert tuple(space) == OPS
    h, w = 28, 40
    bins = torch.arange(augment.RANDAUGMENT_BINS)
    for k, (name, (magnitudes, signed)) in enumerate(space.items()):
        op = torch.full_like(bins, k)
        ours = augment.randaugment_magnitude(op, bins, torch.zeros_like(bins, dtype=torch.bool), h, w)
        theirs = magnitudes(augment.RANDAUGMENT_BINS, h, w)
        theirs = torch.zeros(len(bins)) if theirs is None else theirs.float()
        if name == 'Solarize':
            theirs = theirs * 255                                                   # a fraction of the bound there
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-4), name
        flipped = augment.randaugment_magnitude(op, bins, torch.ones_like(bins, dtype=torch.bool), h, w)
        assert torch.equal(flipped, -ours if signed else ours), name


@pytest.mark.usefixtures('one_thread')
def test_randaugment_draws_n_ops_per_image():
    torch.manual_seed(0)
    x = batch(1).expand(512, -1, -1, -1).contiguous()
    y, ops = augment.randaugment(x, 2, 9, return_ops=True)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.min() >= 0 and y.max() <= 255
    assert ops.shape == (512, 2) and set(ops.flatten().tolist()) == set(range(len(OPS)))
    assert len(set(map(tuple, ops.tolist()))) > 150                       # of 196 pairs: drawn per image and slot
    assert len({tuple(v.flatten()[:256].tolist()) for v in y}) > 150


@pytest.mark.usefixtures('one_thread')
def test_randaugment_applies_the_ops_it_returns():
    """At bin 0 every signed op's magnitude is 0, so the result is determined by the returned ops."""
    torch.manual_seed(1)
    x = batch(128, 3, 16)
    y, ops = augment.randaugment(x, 3, 0, return_ops=True)
    expected = x.float()
    for k in range(3):
        positive = torch.zeros_like(ops[:, k], dtype=torch.bool)
        magnitude = augment.randaugment_magnitude(ops[:, k], torch.zeros_like(ops[:, k]), positive, 16, 16)
        expected = augment.apply_ops(expected, ops[:, k], magnitude)
    assert torch.equal(y, expected)
    assert not torch.equal(y, x.float())


@pytest.mark.usefixtures('one_thread')
def test_randaugment_fixmatch_variant_draws_a_magnitude_per_image():
    """Brightness scales a flat image by 1 +- its magnitude: one magnitude (two signs) for a fixed m, many
    for m=None."""
    x = torch.full((2048, 1, 8, 8), 100, dtype=torch.uint8)
    identity, brightness = OPS.index('Identity'), OPS.index('Brightness')
    for m, most, least in ((9, 2, 2), (None, 61, 8)):
        torch.manual_seed(2)
        y, ops = augment.randaugment(x, 2, m, return_ops=True)
        only_brightness = ((ops == brightness).sum(1) == 1) & ((ops == identity).sum(1) == 1)
        factors = {round(v, 4) for v in (y[only_brightness, 0, 0, 0] / 100).tolist()}
        assert least <= len(factors) <= most, (m, factors)


@pytest.mark.usefixtures('one_thread')
def test_augmix_mixes_its_chains_convexly():
    torch.manual_seed(0)
    x = batch(64, 3, 16).float()
    y, chains, weights, m, ops = augment.augmix(x, return_parts=True)
    assert chains.shape == (3, 64, 3, 16, 16) and weights.shape == (64, 3) and m.shape == (64,)
    assert (weights >= 0).all() and torch.allclose(weights.sum(1), torch.ones(64)) and ((m >= 0) & (m <= 1)).all()
    mixed = (weights.t()[:, :, None, None, None] * chains).sum(0)
    assert torch.allclose(y, (1 - m.view(-1, 1, 1, 1)) * x + m.view(-1, 1, 1, 1) * mixed, atol=1e-3)
    every = torch.cat([x[None], chains])
    assert (y >= every.amin(0) - 1e-3).all() and (y <= every.amax(0) + 1e-3).all()
    assert not torch.equal(chains[0], x) and weights.std(0).min() > 0.1     # chains augment; weights per image


@pytest.mark.usefixtures('one_thread')
def test_augmix_chains_use_its_ops_and_depths():
    torch.manual_seed(1)
    x = batch(256, 1, 8)
    allowed = {OPS.index(name) for name in augment.AUGMIX_OPS}
    identity = OPS.index('Identity')
    _, _, _, _, ops = augment.augmix(x, return_parts=True)
    assert ops.shape == (3, 256, 3)
    applied = ops != identity
    depth = applied.sum(-1)
    assert set(depth.flatten().tolist()) == {1, 2, 3}                                  # random depth 1..3
    assert torch.equal(applied, torch.arange(3) < depth[..., None])                    # skipped slots trail
    assert set(ops[applied].tolist()) == allowed                                       # AugMix's ops, all of them
    _, _, _, _, ops = augment.augmix(x, depth=2, return_parts=True)
    assert ops.shape == (3, 256, 2) and (ops != identity).all()


@pytest.mark.usefixtures('one_thread')
def test_augmix_magnitudes_follow_the_reference():
    """Levels U(0.1, severity) of 10 as the reference's float_parameter/int_parameter (int() truncates, and the
    level stays below severity): shear up to 0.03 * severity; whole degrees, pixels (side / 3 at level 10) and
    bits; posterize to 4 - int(0.4 level) bits, solarize at 256 - int(25.6 level)."""
    n, severity, h, w = 4096, 3, 30, 60
    level = torch.empty(n).uniform_(0.1, severity, generator=torch.Generator().manual_seed(0))
    negative = torch.arange(n) % 2 == 0
    for name, low, high, whole in (('ShearX', 0.003, 0.09, False), ('ShearY', 0.003, 0.09, False),
                                   ('Rotate', 0, 8, True), ('TranslateX', 0, 5, True), ('TranslateY', 0, 2, True),
                                   ('Posterize', 3, 4, True), ('Solarize', 180, 254, True)):
        magnitude = augment._augmix_magnitude(torch.full((n,), OPS.index(name)), level, negative, h, w)
        size = magnitude.abs() if name in augment.GEOMETRIC_OPS else magnitude
        assert size.min() >= low - 1e-6 and size.max() <= high + 1e-6, name
        assert size.min() < low + 0.01 * high and size.max() > 0.97 * high, name             # the whole range
        assert not whole or torch.equal(magnitude, magnitude.round()), name
        assert (name in augment.GEOMETRIC_OPS) == bool((magnitude < 0).any()), name    # random sign


@pytest.mark.usefixtures('one_thread')
def test_augmix_per_image_and_range():
    torch.manual_seed(2)
    x = batch(1).expand(64, -1, -1, -1).contiguous()
    y = augment.augmix(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.min() >= 0 and y.max() <= 255
    assert len({tuple(v.flatten().tolist()) for v in y}) == 64


AUGMENTERS = {'cutout': lambda x: augment.cutout(x, 16), 'randaugment': lambda x: augment.randaugment(x, 2, 9),
              'randaugment_fixmatch': lambda x: augment.randaugment(x, 2, None), 'augmix': augment.augmix}
WARPS_PER_CALL = {'cutout': 0, 'randaugment': 2, 'randaugment_fixmatch': 2, 'augmix': 3 * augment.AUGMIX_MAX_DEPTH}


@pytest.mark.usefixtures('one_thread')
@pytest.mark.parametrize('name', AUGMENTERS)
def test_new_augmentations_are_batched_and_reproducible(name, monkeypatch):
    """One call on 256 CIFAR-sized images takes well under a second and warps the batch once per op slot, not
    once per image; the draws come from torch's global RNG."""
    f = AUGMENTERS[name]
    x = batch(256)
    f(x[:8])                                                                    # first-call overheads
    warps = []
    grid_sample = F.grid_sample
    monkeypatch.setattr(F, 'grid_sample', lambda *args, **kwargs: warps.append(1) or grid_sample(*args, **kwargs))
    torch.manual_seed(3)
    start = time.perf_counter()
    y = f(x)
    assert time.perf_counter() - start < 0.5, name
    assert len(warps) == WARPS_PER_CALL[name]
    torch.manual_seed(3)
    assert torch.equal(f(x), y)
    torch.manual_seed(4)
    assert not torch.equal(f(x), y)


def test_every_op_takes_the_crops_channels_last_output():
    """The scripts feed RandAugment, AugMix and CutOut the crop's output, a permuted (non-contiguous) tensor:
    every op must give what it gives on a contiguous copy."""
    torch.manual_seed(2)
    cropped = augment.pad_crop_flip(batch(len(augment.RANDAUGMENT_OPS), 3, 16), pad=2)
    assert not cropped.is_contiguous()
    op = torch.arange(len(augment.RANDAUGMENT_OPS))
    magnitude = torch.full((len(op),), 0.3)
    assert torch.equal(augment.apply_ops(cropped, op, magnitude), augment.apply_ops(cropped.contiguous(), op, magnitude))
    for fn in (lambda x: augment.augmix(x), lambda x: augment.cutout(x, 5), lambda x: augment.randaugment(x, 2, 9)):
        torch.manual_seed(3)
        a = fn(cropped)
        torch.manual_seed(3)
        assert torch.equal(a, fn(cropped.contiguous()))
