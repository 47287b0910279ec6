"""MixMatch's math, shared by every method: sharpening, MixUp, the losses, the running train accuracy (the
competence signal the adaptive threshold follows) and the EMA of the weights used for evaluation. Shared module
(identical copies in every method folder)."""
import torch
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
# Train accuracy (the adaptive threshold follows it; every method logs it)
# =========================================================================================================
class TrainAccuracy:
    """Running top-1 on the labeled rows of the current window of --acc-window steps, as integer counts on
    the device. At a window's start no batch has been counted yet and the previous window's last value is
    used (the original's "last acc val update"); the very first window starts at 0."""

    def __init__(self, device):
        self.state = torch.zeros(4, dtype=torch.long, device=device)  # correct, seen, seed_correct, seed_seen

    def add(self, correct, seen):
        """correct, seen: counts of one step (tensors or ints), already summed over processes."""
        self.state[0] += correct
        self.state[1] += seen

    def fraction(self):
        """(numerator, denominator) of the accuracy in force, as device tensors; denominator >= 1."""
        fresh = self.state[1] > 0
        num = torch.where(fresh, self.state[0], self.state[2])
        den = torch.where(fresh, self.state[1], self.state[3])
        return num, den.clamp(min=1)

    def new_window(self):
        fresh = self.state[1] > 0
        self.state[2:] = torch.where(fresh, self.state[:2], self.state[2:])
        self.state[:2] = 0


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
