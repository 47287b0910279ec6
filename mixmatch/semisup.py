"""MixMatch's math, shared by every method: sharpening, MixUp, the losses, the running train accuracy (the
competence signal the adaptive threshold follows) and the EMA of the weights used for evaluation. Shared module
(identical copies in every method folder)."""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel


# =========================================================================================================
# MixMatch pieces
# =========================================================================================================
def sharpen(p, T):
    """p^(1/T), renormalized (MixMatch eq. 7)."""
    p = p.pow(1.0 / T)
    return p / p.sum(dim=1, keepdim=True)


def sample_mixup_lambda(alpha, device):
    """lambda ~ Beta(alpha, alpha), then max(l, 1-l) so every mixed row stays closest to its own input.
    Drawn on the device from its global RNG (no host sync, saved with the checkpoint)."""
    if alpha <= 0:
        return torch.ones((), device=device)
    a = torch.full((), float(alpha), device=device)
    lam = torch.distributions.Beta(a, a, validate_args=False).sample()  # validation would sync
    return torch.maximum(lam, 1 - lam)


def mixup_partner(valid):
    """A random permutation that maps valid rows onto valid rows and the rest onto the rest, so dropped
    (unkept) samples never mix with kept ones. Static shapes, no host sync."""
    shuffled = (torch.rand(valid.shape, device=valid.device) + (~valid).float()).argsort()  # valid first, random
    in_order = (~valid).to(torch.uint8).argsort(stable=True)                                # valid first, by index
    partner = torch.empty_like(shuffled)
    partner[in_order] = shuffled
    return partner


MIXES = ('mixup', 'cutmix')


def mix_rows(x, targets, partner, lam, kind):
    """Every row mixed with its partner row at weight lam (a scalar), and the targets with it.
    mixup (MixMatch): lam * x + (1 - lam) * x[partner].
    cutmix (Yun et al. 2019): a box of the partner's pixels, side sqrt(1 - lam) of the image's, centred at a place
    drawn per row and clipped at the borders; each row's targets mix by the area it actually kept (as CutMix
    corrects lambda after clipping)."""
    if kind == 'mixup':
        return lam * x + (1 - lam) * x[partner], lam * targets + (1 - lam) * targets[partner]
    n, _, h, w = x.shape
    dev = x.device
    side = torch.sqrt(1 - lam)
    box_h, box_w = (side * h).round().long(), (side * w).round().long()
    cy, cx = torch.randint(0, h, (n, 1), device=dev), torch.randint(0, w, (n, 1), device=dev)
    top, left = (cy - box_h // 2).clamp(min=0), (cx - box_w // 2).clamp(min=0)
    bottom, right = (cy - box_h // 2 + box_h).clamp(max=h), (cx - box_w // 2 + box_w).clamp(max=w)
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows, in_cols = (rows >= top) & (rows < bottom), (cols >= left) & (cols < right)   # n x h, n x w
    box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]                            # n x 1 x h x w
    kept = 1 - box.flatten(1).float().mean(dim=1, keepdim=True)                           # n x 1: own area
    return torch.where(box, x[partner], x), kept * targets + (1 - kept) * targets[partner]


def soft_cross_entropy(logits, targets):
    """Per row: -sum_c target_c * log softmax(logits)_c."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def unlabeled_loss(logits, targets, mask, kind):
    """Mean over kept rows (mask) of the MSE between softmax and target (averaged over classes too, as
    MixMatch) or of the soft cross-entropy. Zero when nothing is kept."""
    if kind == 'mse':
        per_row = (torch.softmax(logits.float(), dim=1) - targets).pow(2).mean(dim=1)
    else:
        per_row = soft_cross_entropy(logits, targets)
    mask = mask.float()
    return (per_row * mask).sum() / mask.sum().clamp(min=1)


# =========================================================================================================
# Learning rate: a function of the step and the flags, so that a resumed run continues the schedule exactly
# =========================================================================================================
LR_SCHEDULES = ('constant', 'multistep', 'exponential', 'cosine')


def lr_at(step, args):
    """The learning rate of the step-th update (step 0 is the first)."""
    if args.lr_schedule == 'multistep':
        return args.lr * args.lr_factor ** sum(step >= m for m in args.lr_milestones)
    if args.lr_schedule == 'exponential':
        return args.lr * args.lr_gamma ** step
    if args.lr_schedule == 'cosine':  # FixMatch: never reaches 0 (7/16 of a half period)
        return args.lr * math.cos(7 * math.pi * step / (16 * args.steps))
    return args.lr


# =========================================================================================================
# Train accuracy (the adaptive threshold follows it; every method logs it)
# =========================================================================================================
class TrainAccuracy:
    """The running top-1 on the labeled batches of the current window of --acc-window steps (the original: one
    epoch), as integer counts on the device, so that k = floor(B_u * acc) is exact. --accuracy sets how a
    window starts:
      last-batch  session 431's "last acc val update" (the paper's table 2): the previous window's last batch
                  accuracy enters the new window's mean with the weight of one image, as the original's
                  AverageMeter.update(value, 1) beside batches of weight B; the first window's seed is 0.
      none        session 401: each window starts empty, so its first step reads 0.
      window      the first release's rule: until the window's first batch, the previous window's mean.
    completed() is the mean of the last completed window (unseeded), which the warm start decides on."""
    SEEDS = ('last-batch', 'none', 'window')

    def __init__(self, device, seed='last-batch'):
        self.seed = seed
        self.state = torch.tensor([0, 0, 0, 0, 0, 1, 0, 1], dtype=torch.long, device=device)  # what checkpoints save
        # four (correct, seen) pairs, views into state: this window's counts, the last batch's, the seed the window
        # starts from, and the last completed window's
        self.window, self.last_batch, self.start, self.done = self.state.view(4, 2)

    def add(self, correct, seen):
        """correct, seen: counts of one step (tensors or ints), already summed over processes."""
        (window_correct, window_seen), (batch_correct, batch_seen) = self.window, self.last_batch
        window_correct += correct
        window_seen += seen
        batch_correct.fill_(correct)
        batch_seen.fill_(seen)

    def fraction(self):
        """(numerator, denominator) of the accuracy in force, as device tensors; denominator >= 1."""
        (correct, seen), (seed_correct, seed_seen) = self.window, self.start
        if self.seed == 'last-batch':  # (seed_correct / seed_seen * 1 + correct) / (1 + seen), in integers
            return seed_correct + seed_seen * correct, seed_seen * (1 + seen)
        if self.seed == 'window':
            fresh = seen > 0
            return torch.where(fresh, correct, seed_correct), torch.where(fresh, seen, seed_seen).clamp(min=1)
        return correct, seen.clamp(min=1)

    def completed(self):
        """(correct, seen) of the last completed window, (0, 1) before one completes."""
        return tuple(self.done)

    def new_window(self):
        """An empty window keeps the seed it had."""
        fresh = self.window[1:] > 0
        if self.seed != 'none':
            source = self.last_batch if self.seed == 'last-batch' else self.window
            self.start.copy_(torch.where(fresh, source, self.start))
        self.done.copy_(torch.where(fresh, self.window, self.done))
        self.window.zero_()

    def load(self, saved):
        """A saved state; the first release saved 4 counts (window-mean seed), which load under --accuracy window."""
        if len(saved) == 4 and self.seed == 'window':
            zero, one = saved[0] * 0, saved[0] * 0 + 1
            saved = torch.stack([saved[0], saved[1], zero, zero, saved[2], saved[3], zero, one])
        if saved.shape != self.state.shape:
            return False
        self.state.copy_(saved)
        return True


@contextlib.contextmanager
def batch_statistics_only(model):
    """BatchNorm layers normalize with the batch's own statistics and leave their running statistics alone."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True

# =========================================================================================================
# EMA of weights, through torch.optim.swa_utils
# =========================================================================================================
class EMA(AveragedModel):
    """swa_utils' AveragedModel over parameters and buffers (BatchNorm statistics too), with an update that
    never reads n_averaged on the host: the stock update_parameters does (`bool(n_averaged == 0)` and a
    host-to-device copy), which is a device synchronization every step on CUDA."""

    def update_parameters(self, model):
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        floats = [i for i, t in enumerate(mine) if t.is_floating_point()]
        counters = [i for i, t in enumerate(mine) if not t.is_floating_point()]  # BatchNorm's num_batches_tracked
        self.multi_avg_fn([mine[i].detach() for i in floats], [theirs[i] for i in floats], self.n_averaged)
        if counters:
            torch._foreach_copy_([mine[i].detach() for i in counters], [theirs[i] for i in counters])
        self.n_averaged += 1


def make_ema(model, decay):
    """EMA of `model` for evaluation, or None when decay is 0. The n-th update (n = 0, 1, ...) uses decay
    min(decay, (1+n)/(10+n)) and the first copies, so a 500-step run is not dominated by its initialization."""
    if decay == 0:
        return None

    def ema_update(ema_params, params, n_averaged):
        d = torch.where(n_averaged == 0, 0.0, torch.clamp((1.0 + n_averaged) / (10.0 + n_averaged), max=decay))
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    device = next(model.parameters()).device
    return EMA(model, device=device, multi_avg_fn=ema_update, use_buffers=True)
