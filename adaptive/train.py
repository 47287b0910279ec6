"""Adaptive-threshold MixMatch (D. Kim, Y. Lee, KAIST 2020): MixMatch that trains only on the guessed labels
it trusts most. Each step keeps the floor(B_u * train_acc) most confident unlabeled images whose confidence
is also >= --min-th, where train_acc is the model's own running top-1 on its labeled batches: early on, when
the model is often wrong, few guesses are used; as it improves, more are. Unkept images take no part in
mixup or the unlabeled loss, which is a soft cross-entropy with weight 1.

    python adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce         # the paper's method (session 431)
    python adaptive/train.py --min-th 0.5 --loss mse --lambda-u 5.66 --accuracy none   # table 1's MSE (session 401)
    python adaptive/train.py --evaluate runs/<run>/best.pt                # test top-1/top-5 of a checkpoint

This file is the method: the family's flags and policy classes. The run around them (guess, step, loop,
checkpoints) is loop.py, so `diff mixmatch/train.py adaptive/train.py` shows everything this family changes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import torch

import flags
import loop
from errors import UserError
from policy import Policy

METHOD = 'adaptive'
# This family's defaults, one line a knob: with flags.DEFAULTS (the shared ones), what a run without flags uses.
DEFAULTS = {
    'policy': 'accuracy',
    'loss': 'ce',                  # the paper's soft cross-entropy; --lambda-u follows it: 1
    'min_th': 0.5,                 # the paper's floor
    'confidence': 'unsharpened',   # the original code's (the report's Algorithm 1: sharpened)
    # the policies' own settings: --policy warm-start:warm-until=30,extra-draws=5
    'warm_threshold': 0.9,         # warm-start: the fixed threshold before the switch (the notes': 0.9 or 0.8)
    'warm_until': 20.0,            # warm-start: switch once the train accuracy exceeds this many % (the original's)
    'extra_draws': 5,              # warm-start: most further unlabeled batches drawn per step (the original's)
    'flex_threshold': 0.95,        # flexmatch: tau, the threshold of a class that is learned well (FlexMatch's)
    'flex_warmup': 'on',           # flexmatch: count the images not yet above tau (on|off; FlexMatch's on)
    'free_momentum': 0.999,        # freematch: momentum of its EMAs (FreeMatch's)
}


def add_method_flags(parser):
    g = parser.add_argument_group('pseudo-label policy: adaptive threshold')
    g.add_argument('--min-th', type=float,
                   help='confidence floor: no image below it is kept, whatever the accuracy (paper: 0.5)')
    g.add_argument('--confidence', choices=('unsharpened', 'sharpened'),
                   help='max of the mean prediction before (original code) or after sharpening (report, Algorithm 1)')
    return g


def check_method_args(args):
    if not 0 <= args.min_th <= 1:
        raise UserError(f'--min-th {args.min_th} must be in [0, 1]')
    if args.acc_source == 'val' and args.n_val == 0:
        raise UserError('--accuracy val needs a validation set (--n-val > 0)')
    checks = [(0 < args.warm_threshold <= 1 and 0 <= args.warm_until <= 100, '--policy warm-start: warm-threshold '
               'must be in (0, 1] and warm-until in [0, 100]'), (args.extra_draws >= 0, '--policy warm-start: '
               'extra-draws must be >= 0'), (0 < args.flex_threshold <= 1 and args.flex_warmup in ('on', 'off'),
              '--policy flexmatch: flex-threshold must be in (0, 1] and flex-warmup on or off'),
              (0 <= args.free_momentum < 1, '--policy freematch: free-momentum must be in [0, 1)')]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def run_tag(args):
    """The flags of this family that name its default run directory."""
    return f'minth{args.min_th:g}-{args.acc_source}acc-{args.confidence}'


class Accuracy(Policy):
    """The paper's adaptive threshold: keep the k = floor(B_u * acc) most confident images (ties: the earlier
    in the batch first) that also have confidence >= --min-th. acc is the running train top-1 (or the last val
    top-1), in exact integer arithmetic. Under torchrun the ranking runs over every process's images (B_u: the
    global batch, process by process). The threshold logged is the k-th highest confidence raised to --min-th,
    or 1 when k is 0."""
    FLAGS = ('min_th', 'acc_source', 'confidence')

    @staticmethod
    def reads_train_acc(args):
        return args.acc_source == 'train'

    def mask(self, u, ctx):
        everyone = ctx.rt.all_gather(self.confidence(u))
        num, den = ctx.train_acc if self.args.acc_source == 'train' else ctx.val_acc
        self.k = k = (len(everyone) * num) // den
        ranked = everyone.sort(descending=True, stable=True)
        position = torch.empty_like(ranked.indices)
        position[ranked.indices] = torch.arange(len(everyone), device=everyone.device)
        keep = ctx.rt.mine((position < k) & (everyone >= self.args.min_th))
        kth = ranked.values.gather(0, (k - 1).clamp(min=0).view(1)).squeeze(0)
        return keep, torch.where(k > 0, kth.clamp(min=self.args.min_th), torch.ones_like(kth))

    def log_values(self):
        return {'k': self.k.float()}  # how many images the accuracy allows, before the floor


class WarmStart(Accuracy):
    """Sessions 417 and 428: a fixed warm-threshold while the last completed --acc-window's train accuracy is
    at most warm-until % (so the first window is always warm, as the original's first epoch), the paper's
    rule (Accuracy) after it. Then "ensure the ratio": further unlabeled batches are drawn and guessed, up to
    extra-draws, until every process has B_u images that pass the rule; the first B_u kept, in order, train.
    The first step past the warm phase is state (printed, and policy_switch_step in the log). Host syncs: one a
    step in the warm phase (the number of forward passes depends on it); after it two a step, and one before
    each further draw."""
    FLAGS = ('min_th', 'confidence', 'warm_threshold', 'warm_until', 'extra_draws')

    def __init__(self, args, num_classes, n_unlabeled):
        super().__init__(args, num_classes, n_unlabeled)
        self.register_buffer('switched_at', torch.tensor(-1))  # the first step past the warm phase, -1 before

    @staticmethod
    def reads_train_acc(args):
        return True

    def select(self, u, ctx):
        num, den = ctx.window_acc
        warm = 100 * num <= self.args.warm_until * den
        self.switched_at.copy_(torch.where((self.switched_at < 0) & ~warm, ctx.step, self.switched_at))
        self.guessed = torch.full((), float(len(u.images)), device=u.target.device)
        if bool(warm):
            return u, self.confidence(u) >= self.args.warm_threshold, u.target.new_full((), self.args.warm_threshold)
        if int(self.switched_at) == ctx.step and ctx.rt.is_main:
            print(f'warm start: last window\'s train accuracy above {self.args.warm_until:g}% at step {ctx.step}',
                  flush=True)
        pool, (keep, threshold) = u, self.mask(u, ctx)
        for _ in range(self.args.extra_draws):  # the fewest kept on any process decides: all draw as often
            if int(ctx.rt.all_reduce(keep.sum(), 'min')) >= len(u.images):
                break
            more = ctx.draw()
            keep_more, threshold = self.mask(more, ctx)
            pool, keep = pool.cat(more), torch.cat([keep, keep_more])
        self.guessed = torch.full((), float(len(pool.images)), device=u.target.device)
        first = (~keep).to(torch.uint8).argsort(stable=True)[:len(u.images)]  # the kept ones first, in order
        return pool.take(first), keep[first], threshold

    def log_values(self):
        return {'switch_step': self.switched_at.float(), 'guessed': self.guessed}


class FlexMatch(Policy):
    """FlexMatch's class-wise thresholds (Zhang et al. 2021, curriculum pseudo labeling), as the paper writes them:
        sigma_t(c) = #{unlabeled images n whose latest prediction above tau was class c}
        beta_t(c)  = sigma_t(c) / max(max_c sigma_t, N - sum_c sigma_t)   (with threshold warm-up; else / max_c)
        T_t(c)     = M(beta_t(c)) * tau,  M(x) = x / (2 - x)               (the convex mapping)
    An image is kept iff its confidence reaches T_t of its predicted class; then the predictions above tau update
    the per-image record (an image drawn twice in a step: its last copy above tau, as the reference implementation
    USB writes only those) and beta, unless every image shares one record (as USB). The float expressions are USB's
    (semilearn/algorithms/flexmatch/utils.py), so thresholds compare bitwise. Under torchrun the record is pooled:
    every process's images update it (the same state everywhere), where USB keeps one per process."""
    FLAGS = ('flex_threshold', 'flex_warmup', 'confidence')

    def __init__(self, args, num_classes, n_unlabeled):
        super().__init__(args, num_classes, n_unlabeled)
        self.register_buffer('record', torch.full((n_unlabeled,), -1))  # latest class above tau, -1: none yet
        self.register_buffer('beta', torch.zeros(num_classes))

    def mask(self, u, ctx):
        confidence, label = self.confidence(u), u.mean_prob.argmax(dim=1)
        tau = self.args.flex_threshold
        thresholds = tau * (self.beta / (2 - self.beta))
        keep = confidence >= thresholds[label]
        index, confidence, label = (ctx.rt.all_gather(t) for t in (u.index, confidence, label))
        above = confidence >= tau
        new = torch.where(above, label, self.record[index])
        order = (2 * index + above.long()).argsort(stable=True)  # an image's copies in a row, those above tau last,
        last = torch.searchsorted(index[order], index[order], right=True) - 1  # so the last of them is one if any:
        self.record[index[order]] = new[order][last]  # every copy writes that one
        counts = torch.zeros(self.num_classes + 1, dtype=torch.long, device=index.device)  # no host sync, unlike
        counts.index_add_(0, self.record + 1, torch.ones_like(self.record))  # bincount: [unused, sigma_1 ..]
        scale = counts.max() if self.args.flex_warmup == 'on' else counts[1:].max().clamp(min=1)
        self.beta.copy_(torch.where(counts.max() < len(self.record), counts[1:] / scale, self.beta))
        return keep, thresholds.mean()


class FreeMatch(Policy):
    """FreeMatch's self-adaptive thresholds (Wang et al. 2023), as the paper writes them, over every process's
    batch (q: the mean predictions, lambda: free-momentum), both EMAs started at 1/C:
        tau_t    = lambda * tau_{t-1} + (1 - lambda) * mean_b max_c q_b(c)      (global)
        p_t(c)   = lambda * p_{t-1}(c) + (1 - lambda) * mean_b q_b(c)          (local)
        tau_t(c) = p_t(c) / max_c p_t(c) * tau_t
    The batch enters the EMAs before the mask, as the reference implementation USB, whose float expressions these
    are (semilearn/algorithms/freematch/utils.py: tau_0 the mean of p_0, tau * (p / max p)); USB starts p at ones
    (tau at 1), the paper and this class at 1/C. No fairness loss."""
    FLAGS = ('free_momentum', 'confidence')

    def __init__(self, args, num_classes, n_unlabeled):
        super().__init__(args, num_classes, n_unlabeled)
        self.register_buffer('p', torch.full((num_classes,), 1 / num_classes))
        self.register_buffer('tau', self.p.mean())

    def mask(self, u, ctx):
        confidence, label = self.confidence(u), u.mean_prob.argmax(dim=1)
        m = self.args.free_momentum
        self.tau.mul_(m).add_((1 - m) * ctx.rt.all_gather(confidence).mean())
        self.p.mul_(m).add_((1 - m) * ctx.rt.all_gather(u.mean_prob).mean(dim=0))
        thresholds = self.tau * (self.p / self.p.max())
        return confidence >= thresholds[label], thresholds.mean()


POLICIES = {'accuracy': Accuracy, 'warm-start': WarmStart, 'flexmatch': FlexMatch, 'freematch': FreeMatch}


# =========================================================================================================
# The same in the three scripts
# =========================================================================================================
def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, DEFAULTS)


if __name__ == '__main__':
    loop.main(get_args, METHOD, POLICIES, run_tag)
