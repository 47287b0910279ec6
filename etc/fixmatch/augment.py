"""Batched, per-sample data augmentation on the training device. Shared module (identical copies in every folder).

Input: uint8 images N x C x H x W on any device. Output: float pixels in [0, 255], same shape, every image
with its own random crop and flip, drawn from the global RNG of the images' device (saved in checkpoints).
No per-image Python work: one gather (pad-crop) or one grid_sample (random-resized-crop) per batch.
cutout, randaugment and augmix (below) take uint8 or float images and work the same way: per-image draws, every
op computed for the whole batch and selected per image.
"""
import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ('auto', 'padcrop', 'rrc', 'none')
RRC_MIN_SIZE = 64  # 'auto' uses random-resized-crop for images at least this many pixels on a side
PAD_FRACTION = 1 / 8  # pad-crop shifts by up to this fraction of the side: MixMatch's 4 px on 32 px images


def choose(name, image_size):
    """Resolve augment 'auto' (flags.DEFAULTS): MixMatch's pad-crop for small images, ImageNet-style random-resized-crop
    (as the original's 224 px pipeline) for large ones."""
    if name == 'auto':
        return 'rrc' if image_size >= RRC_MIN_SIZE else 'padcrop'
    return name


def augment(images, kind, randaugment_n_m=None, augmix_severity=0, cutout_size=0):
    """Crop and flip of `kind`, then (each only where asked) RandAugment (N, M), AugMix at a severity, CutOut of a
    side in pixels: the order of FixMatch's strong augmentation, CutOut last."""
    if kind == 'padcrop':
        x = pad_crop_flip(images, pad=max(1, int(images.shape[-1] * PAD_FRACTION)))
    elif kind == 'rrc':
        x = random_resized_crop_flip(images)
    else:
        x = images.float()
    if randaugment_n_m:
        x = randaugment(x, *randaugment_n_m)
    if augmix_severity:
        x = augmix(x, augmix_severity)
    if cutout_size:
        x = cutout(x, cutout_size)
    return x


def rotate90(images, quarter_turns):
    """Image i turned counter-clockwise by quarter_turns[i] x 90 degrees (RotNet's four classes); square images."""
    turned = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])   # 4 x N x C x H x W
    return turned[quarter_turns, torch.arange(len(images), device=images.device)]


def pad_crop_flip(images, pad):
    """Reflect-pad by `pad` pixels, crop back to H x W at a random offset, flip horizontally with p=0.5.
    The reflection is folded into the gather indices, so nothing is padded in memory."""
    n, c, h, w = images.shape
    dev = images.device
    dy = torch.randint(-pad, pad + 1, (n, 1), device=dev)
    dx = torch.randint(-pad, pad + 1, (n, 1), device=dev)
    flip = torch.rand(n, 1, device=dev) < 0.5
    rows = _reflect(torch.arange(h, device=dev) + dy, h)                      # n x h
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = _reflect(torch.where(flip, w - 1 - cols, cols) + dx, w)            # n x w
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    out = images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2).float()


def _reflect(i, size):
    """Index of a reflect-padded coordinate (no edge repeat, as F.pad(mode='reflect')). Valid for |pad| < size."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def random_resized_crop_flip(images, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop (area fraction ~ U(scale), log aspect ~ U(log ratio)) followed by a
    horizontal flip, for the whole batch at once with bilinear grid_sample. Crops that would not fit are
    shrunk to fit instead of being re-drawn (torchvision retries 10 times, then center-crops)."""
    n, c, h, w = images.shape
    dev = images.device
    area = torch.empty(n, device=dev).uniform_(*scale)
    log_r = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    cw = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)                  # crop width, fraction of W
    ch = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - cw)                      # crop centre in [-1, 1]
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - ch)
    sign = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw * sign, cx, ch, cy
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    return F.grid_sample(images.float(), grid, mode='bilinear', padding_mode='border', align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# CutOut, RandAugment and AugMix, batched: every image draws its own ops and magnitudes, and each op is computed
# for the whole batch and selected per image with torch.where (no per-image Python work, no host synchronisation).

PIXEL_MAX = 255.0

CUTOUT_FILL = 0.0  # black; DeVries & Taylor zero normalised data, which fills the dataset mean instead


def cutout(images, size):
    """CutOut (DeVries & Taylor 2017): per image, a size x size square centred at a uniformly drawn pixel
    (clipped at the borders, so it can cover less) is zeroed. size 0 returns the images unchanged."""
    x = images.float()
    if size <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    top = torch.randint(h, (n, 1), device=dev) - size // 2                    # square's first row (may be < 0)
    left = torch.randint(w, (n, 1), device=dev) - size // 2
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    in_rows = (rows >= top) & (rows < top + size)                             # n x h
    in_cols = (cols >= left) & (cols < left + size)                           # n x w
    if x is images:  # filled in place below, so never the caller's tensor
        x = x.clone()
    return x.masked_fill_(in_rows[:, None, :, None] & in_cols[:, None, None, :], CUTOUT_FILL)


# torchvision v2 RandAugment's op list, in its order (indices into it are the `op` tensors below)
RANDAUGMENT_OPS = ('Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness', 'Color',
                   'Contrast', 'Sharpness', 'Posterize', 'Solarize', 'AutoContrast', 'Equalize')
GEOMETRIC_OPS = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
BLEND_OPS = ('Brightness', 'Color', 'Contrast', 'Sharpness')  # blends of the image with a degenerate image
SIGNED_OPS = GEOMETRIC_OPS + BLEND_OPS                         # the magnitude gets a random sign (p = 0.5)
OP_INDEX = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}

RANDAUGMENT_BINS = 31  # torchvision's num_magnitude_bins: bin 0 is the weakest, bin 30 the strongest
RANDAUGMENT_MAX_MAGNITUDE = RANDAUGMENT_BINS - 1
# torchvision v2 RandAugment._AUGMENTATION_SPACE: the magnitude at the top bin, linear from 0 at bin 0.
# Shears are shear factors, translations a fraction of the image side, rotations degrees, blends factor - 1.
RANDAUGMENT_TOP = {'ShearX': 0.3, 'ShearY': 0.3, 'TranslateX': 150 / 331, 'TranslateY': 150 / 331, 'Rotate': 30.0,
                   'Brightness': 0.9, 'Color': 0.9, 'Contrast': 0.9, 'Sharpness': 0.9}
RANDAUGMENT_POSTERIZE_BITS = (8, 4)  # torchvision: bits fall from 8 at bin 0 to 4 at the top bin (rounded)

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
SMOOTH_CENTRE, SMOOTH_TOTAL = 5.0, 13.0  # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 (adjust_sharpness)
PIXEL_BITS = 8  # Posterize and Equalize treat the 0..255 floats as the uint8 data torchvision and PIL work on
HISTOGRAM_BINS = 2 ** PIXEL_BITS


def randaugment_magnitude(op, bins, negative, height, width):
    """The argument apply_ops takes for RandAugment op `op` at magnitude bin `bins` (0..30), negated where
    `negative` for the signed ops, as torchvision v2 RandAugment maps its 31 bins (same float32 linspace)."""
    dev = op.device
    ramp = lambda top: torch.linspace(0.0, top, RANDAUGMENT_BINS, device=dev)  # noqa: E731
    zero = torch.zeros(RANDAUGMENT_BINS, device=dev)
    steps = torch.arange(RANDAUGMENT_BINS, device=dev)
    most_bits, least_bits = RANDAUGMENT_POSTERIZE_BITS
    rows = {name: ramp(top) for name, top in RANDAUGMENT_TOP.items()}
    rows['TranslateX'] = ramp(RANDAUGMENT_TOP['TranslateX'] * width)
    rows['TranslateY'] = ramp(RANDAUGMENT_TOP['TranslateY'] * height)
    rows['Posterize'] = (most_bits - steps / ((RANDAUGMENT_BINS - 1) / (most_bits - least_bits))).round()
    # torchvision's float32 threshold fraction 1..0 times the bound in float64, then float32 as the comparison
    # with uint8 pixels rounds it (so e.g. bin 24 gives 51.000004: pixel 51 is kept, as in torchvision)
    rows['Solarize'] = (torch.linspace(1.0, 0.0, RANDAUGMENT_BINS, device=dev).double() * PIXEL_MAX).float()
    table = torch.stack([rows.get(name, zero) for name in RANDAUGMENT_OPS])  # ops x bins
    magnitude = table[op, bins]
    return torch.where(negative & _is_any(op, SIGNED_OPS), -magnitude, magnitude)


def _is_any(op, names):
    """Boolean mask: op (an index tensor) is one of the named ops."""
    mask = torch.zeros_like(op, dtype=torch.bool)
    for name in names:
        mask = mask | (op == OP_INDEX[name])
    return mask


def apply_ops(images, op, magnitude, interpolation='nearest', possible_ops=RANDAUGMENT_OPS):
    """Apply op RANDAUGMENT_OPS[op[i]] with argument magnitude[i] to image i, for the whole batch at once.

    images: N x C x H x W (C = 1 or 3), pixels in [0, 255]; op: LongTensor (N,); magnitude: float (N,), signed,
    in the op's own units, as torchvision's RandAugment passes it on (see randaugment_magnitude):
    ShearX/Y: shear factor (source x = x + s * y about the top-left corner, as torchvision's RandAugment, which
    shears about center=[0, 0]); TranslateX/Y: pixels, truncated to an int; Rotate: degrees, counter-clockwise,
    about the centre; Brightness/Color/Contrast/Sharpness: factor - 1; Posterize: bits kept; Solarize: threshold
    on 0..255 (pixels >= it are inverted); Identity, AutoContrast, Equalize: ignored.
    Geometric ops use one grid_sample (`interpolation`: 'nearest' as RandAugment, 'bilinear' as AugMix), fill 0.
    Only the ops in `possible_ops` are computed (others act as Identity): callers that draw from a subset skip
    the cost of the rest. Returns float32 in [0, 255].
    """
    op = op.view(-1, 1, 1, 1)
    magnitude = magnitude.float().view(-1, 1, 1, 1)
    wanted = lambda names: any(name in possible_ops for name in names)  # noqa: E731
    # One stage per op, each on the whole batch and an exact no-op for the images that drew another op, so
    # chaining the stages applies every image's own op to its input. The stages write into `out` (ours, not the
    # caller's): on the CPU a fresh full-size temporary costs more than the arithmetic.
    out = images.float()
    if out is images:
        out = out.clone()
    if wanted(GEOMETRIC_OPS):
        # selected rather than warped by the identity map, which bilinear sampling does not reproduce bit for bit
        warped = _warp(out, op.view(-1), magnitude.view(-1), interpolation)
        torch.where(_is_any(op, GEOMETRIC_OPS), warped, out, out=out)
    if wanted(BLEND_OPS):
        out = _blend(out, op, torch.where(_is_any(op, BLEND_OPS), magnitude, 0.0))
    if wanted(('Posterize',)):
        # keep the top `bits` bits: floor to a multiple of 2^(8 - bits), as torchvision's mask on uint8 data
        bits = torch.where(op == OP_INDEX['Posterize'], magnitude, float(PIXEL_BITS))
        step = torch.exp2(PIXEL_BITS - bits)
        torch.where(bits < PIXEL_BITS, (out / step).floor_().mul_(step), out, out=out)
    if wanted(('Solarize',)):
        torch.where((op == OP_INDEX['Solarize']) & (out >= magnitude), PIXEL_MAX - out, out, out=out)
    if wanted(('AutoContrast',)):
        _autocontrast_(out, op == OP_INDEX['AutoContrast'])
    if wanted(('Equalize',)):
        equalized, changed = _equalize(out)
        torch.where(changed & (op == OP_INDEX['Equalize']), equalized, out, out=out)
    return out.clamp_(0, PIXEL_MAX)


def _warp(x, op, magnitude, interpolation):
    """Shear, translate or rotate each image (one op per image) with one grid_sample, following
    torchvision's affine: the inverse map in pixel coordinates centred on the image, fill 0."""
    n, _, h, w = x.shape
    dev = x.device
    pick = lambda name, value: torch.where(op == OP_INDEX[name], value, torch.zeros_like(value))  # noqa: E731
    shear_x, shear_y = pick('ShearX', magnitude), pick('ShearY', magnitude)
    shift_x, shift_y = pick('TranslateX', magnitude.trunc()), pick('TranslateY', magnitude.trunc())
    angle = pick('Rotate', torch.deg2rad(magnitude))
    cos, sin = angle.cos(), angle.sin()
    # Output pixel -> source pixel. Each image has one op, so the others are 0 and adding them up is that op.
    # Shears are about the top-left corner (torchvision's RandAugment passes center=[0, 0]), hence the offset
    # of half the other side; a translation by t samples from t pixels back.
    a00, a01, b0 = cos, shear_x - sin, shear_x * (h / 2) - shift_x
    a10, a11, b1 = sin + shear_y, cos, shear_y * (w / 2) - shift_y
    xs = (torch.arange(w, device=dev) - (w - 1) / 2).view(1, 1, w)
    ys = (torch.arange(h, device=dev) - (h - 1) / 2).view(1, h, 1)
    # Scale the map to grid_sample's [-1, 1] (align_corners=False) before applying it, as torchvision does, so
    # nearest-neighbour ties at pixel boundaries mostly round the same way.
    col = lambda v, half: (v / half).view(n, 1, 1)  # noqa: E731
    grid = torch.empty(n, h, w, 2, device=dev)                                 # filled in place: no big temporaries
    for axis, (along_x, along_y, offset, half) in enumerate(((a00, a01, b0, w / 2), (a10, a11, b1, h / 2))):
        grid[..., axis].copy_(col(along_x, half) * xs).add_(col(along_y, half) * ys).add_(col(offset, half))
    return F.grid_sample(x, grid, mode=interpolation, padding_mode='zeros', align_corners=False)


def _grayscale(x):
    """N x 1 x H x W luma (torchvision's rgb_to_grayscale); a 1-channel image is its own grayscale."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x, op, magnitude):
    """torchvision's Brightness, Color (saturation), Contrast and Sharpness: factor * x + (1 - factor) * degenerate
    with factor = 1 + magnitude, the degenerate image being black, the grayscale image, the grayscale mean, or
    the 3x3-smoothed image with the original border. magnitude 0 leaves an image exactly as it is.
    (In-place arithmetic where it is safe: fresh full-size temporaries dominate the CPU time.)"""
    h, w = x.shape[2:]
    gray = _grayscale(x)
    # the single-channel degenerate images first (a third of the work for RGB), then the sharpness one
    degenerate = torch.where(op == OP_INDEX['Color'], gray, 0.0)              # 1 channel: gray is x, no change
    degenerate = torch.where(op == OP_INDEX['Contrast'], gray.mean(dim=(1, 2, 3), keepdim=True), degenerate)
    smoothed = x.clone()
    if h > 2 and w > 2:  # torchvision leaves images without an interior unchanged
        # the kernel is the 3x3 box plus (centre - 1) times the centre: sums of shifted slices, several times
        # faster than a depthwise conv2d on the CPU
        rows = x[:, :, :-2] + x[:, :, 1:-1]
        rows += x[:, :, 2:]
        box = rows[..., :-2] + rows[..., 1:-1]
        box += rows[..., 2:]
        box.add_(x[:, :, 1:-1, 1:-1], alpha=SMOOTH_CENTRE - 1).div_(SMOOTH_TOTAL)
        smoothed[:, :, 1:-1, 1:-1] = box
    degenerate = torch.where(op == OP_INDEX['Sharpness'], smoothed, degenerate)
    # x + (1 - f) (d - x) rather than f x + (1 - f) d: exactly x where d == x (sharpness border, 1-channel Color)
    return degenerate.sub_(x).mul_(-magnitude).add_(x)


def _autocontrast_(x, selected):
    """In place: per image and channel, stretch min..max to 0..255 where `selected` (N x 1 x 1 x 1); flat
    channels and unselected images are left exactly as they are (torchvision leaves flat channels)."""
    low = x.amin(dim=(2, 3), keepdim=True)
    span = x.amax(dim=(2, 3), keepdim=True) - low
    keep = (span == 0) | ~selected
    low = torch.where(keep, 0.0, low)
    return x.sub_(low).mul_(torch.where(keep, 1.0, PIXEL_MAX / torch.where(keep, 1.0, span)))


def _equalize(x):
    """Per image and channel histogram equalisation with PIL's lookup table (as torchvision's equalize on uint8):
    pixels binned to whole values 0..255, lut[k] = (count below k + step // 2) // step, step = the number of
    pixels not of the top value // 255. Returns the equalised images (binned values) and the N x C x 1 x 1 mask
    of the channels it changes: PIL leaves those with step 0 as they are."""
    n, c, h, w = x.shape
    channels = n * c
    dev = x.device
    # Flat histogram bin of every pixel: channel * 256 + whole pixel value. int32 with index_add_/index_select
    # rather than int64 with scatter_add_/gather: the int64 copy of a large batch costs more than all the rest.
    levels = x.clamp(0, PIXEL_MAX).to(torch.int32).reshape(channels, h * w)          # truncation: floor, x >= 0
    first_bin = torch.arange(channels, dtype=torch.int32, device=dev).view(channels, 1) * HISTOGRAM_BINS
    index = (levels + first_bin).view(-1)
    counts = torch.zeros(channels * HISTOGRAM_BINS, dtype=torch.int32, device=dev)
    counts.index_add_(0, index, counts.new_ones(1).expand(index.numel()))
    counts = counts.view(channels, HISTOGRAM_BINS).long()
    below = counts.cumsum(1) - counts                                           # pixels darker than each value
    top_count = counts.gather(1, levels.amax(1, keepdim=True).long())
    step = (h * w - top_count) // (HISTOGRAM_BINS - 1)
    lut = ((below + step // 2) // step.clamp(min=1)).clamp(max=HISTOGRAM_BINS - 1).float()
    return lut.view(-1).index_select(0, index).view(n, c, h, w), (step > 0).view(n, c, 1, 1)


def randaugment(images, n=2, m=9, return_ops=False):
    """RandAugment(N, M) (Cubuk et al. 2020) as torchvision's: every image draws n ops uniformly (with
    replacement) from RANDAUGMENT_OPS and applies them in turn at magnitude bin m (0..30), each signed op with a
    random sign. m=None is FixMatch's variant: a uniform bin per image and op. Returns float32 in [0, 255],
    and with return_ops also the N x n LongTensor of the ops drawn (indices into RANDAUGMENT_OPS)."""
    x = images.float()
    count, _, h, w = x.shape
    dev = x.device
    ops = torch.randint(len(RANDAUGMENT_OPS), (count, n), device=dev)
    if m is None:
        bins = torch.randint(RANDAUGMENT_BINS, (count, n), device=dev)
    else:
        if not 0 <= m < RANDAUGMENT_BINS:
            raise ValueError(f'RandAugment magnitude {m} is not a bin in 0..{RANDAUGMENT_BINS - 1}')
        bins = torch.full_like(ops, m)
    negative = torch.rand(count, n, device=dev) < 0.5
    magnitude = randaugment_magnitude(ops, bins, negative, h, w)
    for k in range(n):
        x = apply_ops(x, ops[:, k], magnitude[:, k])
    return (x, ops) if return_ops else x


# AugMix reference (Hendrycks et al. 2020, google-research/augmix augmentations.py): the ops that do not overlap
# ImageNet-C's corruptions; levels sample_level = U(0.1, severity) out of PARAMETER_MAX = 10; each op's argument
# at level 10 (int_parameter truncates to an int; translations a fraction of the side, as torchvision's AugMix).
AUGMIX_OPS = ('AutoContrast', 'Equalize', 'Posterize', 'Rotate', 'Solarize', 'ShearX', 'ShearY', 'TranslateX',
              'TranslateY')
AUGMIX_LEVEL_RANGE = (0.1, 10.0)
AUGMIX_MAX_SEVERITY = 10
AUGMIX_MAX_DEPTH = 3  # depth 0: a uniform depth in 1..3 per image and chain (reference: np.random.randint(1, 4))
AUGMIX_SHEAR, AUGMIX_ROTATE, AUGMIX_TRANSLATE = 0.3, 30, 1 / 3
AUGMIX_POSTERIZE_BITS = 4    # reference: posterize(img, 4 - int_parameter(level, 4))
AUGMIX_SOLARIZE_LEVELS = 256  # reference: solarize(img, 256 - int_parameter(level, 256))


def _augmix_magnitude(op, level, negative, height, width):
    """The argument apply_ops takes for AugMix op `op` at `level`, as the reference's ops compute it."""
    scaled = lambda top: level * top / AUGMIX_LEVEL_RANGE[1]  # noqa: E731  (float_parameter; floor: int_parameter)
    magnitude = torch.zeros_like(level)
    magnitude = torch.where(_is_any(op, ('ShearX', 'ShearY')), scaled(AUGMIX_SHEAR), magnitude)
    magnitude = torch.where(op == OP_INDEX['TranslateX'], scaled(AUGMIX_TRANSLATE * width).floor(), magnitude)
    magnitude = torch.where(op == OP_INDEX['TranslateY'], scaled(AUGMIX_TRANSLATE * height).floor(), magnitude)
    magnitude = torch.where(op == OP_INDEX['Rotate'], scaled(AUGMIX_ROTATE).floor(), magnitude)
    magnitude = torch.where(negative & _is_any(op, GEOMETRIC_OPS), -magnitude, magnitude)
    magnitude = torch.where(op == OP_INDEX['Posterize'],
                            AUGMIX_POSTERIZE_BITS - scaled(AUGMIX_POSTERIZE_BITS).floor(), magnitude)
    return torch.where(op == OP_INDEX['Solarize'],
                       AUGMIX_SOLARIZE_LEVELS - scaled(AUGMIX_SOLARIZE_LEVELS).floor(), magnitude)


def augmix(images, severity=3, width=3, depth=0, alpha=1.0, return_parts=False):
    """AugMix (Hendrycks et al. 2020) without its Jensen-Shannon loss: per image, `width` chains of `depth` ops
    (0: 1..3 per image and chain) drawn from AUGMIX_OPS at levels U(0.1, severity) out of 10, mixed as
    (1 - m) x + m sum_i w_i chain_i(x) with w ~ Dirichlet(alpha) over the chains and m ~ Beta(alpha, alpha).
    Geometric ops are bilinear (as the reference and torchvision's AugMix). Returns float32 in [0, 255]; with
    return_parts also (chains width x N x C x H x W, w N x width, m (N,), ops width x N x slots with Identity
    in the slots past a chain's depth)."""
    if not AUGMIX_LEVEL_RANGE[0] <= severity <= AUGMIX_LEVEL_RANGE[1]:
        raise ValueError(f'AugMix severity {severity} is outside {AUGMIX_LEVEL_RANGE}')
    x = images.float()
    n, _, h, w = x.shape
    dev = x.device
    concentration = torch.full((n, width), float(alpha), device=dev)
    # validate_args=False: checking the parameters would wait for the device
    weights = torch.distributions.Dirichlet(concentration, validate_args=False).sample()          # n x width
    mix = torch.distributions.Beta(concentration[:, 0], concentration[:, 0], validate_args=False).sample()  # n
    slots = depth if depth > 0 else AUGMIX_MAX_DEPTH
    mixed = torch.zeros_like(x)
    chains, ops = [], []
    for i in range(width):  # chain by chain: N-image temporaries (a width x N batch is slower on the CPU)
        chain_depth = depth if depth > 0 else torch.randint(1, AUGMIX_MAX_DEPTH + 1, (n,), device=dev)
        chain, chain_ops = x, []
        for slot in range(slots):
            drawn = torch.randint(len(AUGMIX_OPS), (n,), device=dev)
            op = torch.full_like(drawn, OP_INDEX['Identity'])                  # also what skipped slots keep
            for k, name in enumerate(AUGMIX_OPS):                               # index in AUGMIX_OPS -> RANDAUGMENT_OPS
                op = torch.where((drawn == k) & (slot < chain_depth), OP_INDEX[name], op)
            level = torch.empty(n, device=dev).uniform_(AUGMIX_LEVEL_RANGE[0], severity)
            negative = torch.rand(n, device=dev) < 0.5
            chain = apply_ops(chain, op, _augmix_magnitude(op, level, negative, h, w), interpolation='bilinear',
                              possible_ops=AUGMIX_OPS)
            chain_ops.append(op)
        mixed += weights[:, i].view(n, 1, 1, 1) * chain
        if return_parts:
            chains.append(chain)
            ops.append(torch.stack(chain_ops, dim=-1))
    m = mix.view(n, 1, 1, 1)
    out = mixed.mul_(m).add_((1 - m) * x).clamp_(0, PIXEL_MAX)
    return (out, torch.stack(chains), weights, mix, torch.stack(ops)) if return_parts else out
