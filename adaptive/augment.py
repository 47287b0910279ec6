"""Batched, per-sample data augmentation on the training device. Shared module (identical in all three folders).

Input: uint8 images N x C x H x W on any device. Output: float pixels in [0, 255], same shape, every image
with its own random crop and flip, drawn from the global RNG of the images' device (saved in checkpoints).
No per-image Python work: one gather (pad-crop) or one grid_sample (random-resized-crop) per batch.
"""
import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ('auto', 'padcrop', 'rrc', 'none')
RRC_MIN_SIZE = 64  # 'auto' uses random-resized-crop for images at least this many pixels on a side
PAD_FRACTION = 1 / 8  # pad-crop shifts by up to this fraction of the side: MixMatch's 4 px on 32 px images


def choose(name, image_size):
    """Resolve --augment auto: MixMatch's pad-crop for small images, ImageNet-style random-resized-crop
    (as the original's 224 px pipeline) for large ones."""
    if name == 'auto':
        return 'rrc' if image_size >= RRC_MIN_SIZE else 'padcrop'
    return name


def augment(images, kind):
    if kind == 'padcrop':
        return pad_crop_flip(images, pad=max(1, int(images.shape[-1] * PAD_FRACTION)))
    if kind == 'rrc':
        return random_resized_crop_flip(images)
    return images.float()


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
