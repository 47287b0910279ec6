"""Fixed-threshold MixMatch: MixMatch that trains only on the unlabeled images whose guessed label is confident
enough. An unlabeled image is kept iff its confidence (max of the mean prediction) is >= --threshold; unkept
images take no part in mixup or the unlabeled loss, whose weight is constant.

    python fixed/train.py --threshold 0.8 --lambda-u 5.66     # the paper's fixed 0.8, MSE (session 408)
    python fixed/train.py --evaluate runs/<run>/best.pt       # test top-1/top-5 of a checkpoint

This file is the method: the family's flags and policy classes. The run around them (guess, step, loop,
checkpoints) is loop.py, so `diff mixmatch/train.py fixed/train.py` shows everything this family changes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import torch

import flags
import loop
from errors import UserError
from policy import Guess, Policy

METHOD = 'fixed'
# This family's defaults, one line a knob: with flags.DEFAULTS (the shared ones), what a run without flags uses.
DEFAULTS = {
    'policy': 'constant',
    'loss': 'mse',                 # MixMatch's; --lambda-u follows it: 75
    'threshold': 0.8,              # the paper's (the original code: 0.5)
    'confidence': 'unsharpened',   # the original code's (the report's Algorithm 1: sharpened)
    # the policies' own settings: --policy linear:threshold-end=0.5,schedule-steps=17476
    'threshold_end': 0.5,          # linear: where the threshold ends, from --threshold (the notes' 0.9 to 0.5)
    'schedule_steps': 0,           # linear: steps the fall takes (0: the whole run; the original: 80/300 or 5/300)
    'lambda_pi': 10.0,             # consistency: the Pi-model loss's weight, times lambda_u (the original's)
}


def add_method_flags(parser):
    g = parser.add_argument_group('pseudo-label policy: fixed threshold')
    g.add_argument('--threshold', type=float,
                   help='keep an unlabeled image iff its confidence is >= this (paper: 0.8; the original code: 0.5)')
    g.add_argument('--confidence', choices=('unsharpened', 'sharpened'),
                   help='max of the mean prediction before (original code) or after sharpening (report, Algorithm 1)')
    return g


def check_method_args(args):
    if not 0 < args.threshold <= 1:
        raise UserError(f'--threshold {args.threshold} must be in (0, 1]')
    if args.policy == 'linear' and not 0 < args.threshold_end <= args.threshold:
        raise UserError(f'--policy linear: threshold-end={args.threshold_end:g} must be in (0, --threshold '
                        f'{args.threshold:g}]')
    if args.schedule_steps < 0 or args.lambda_pi < 0:
        raise UserError('--policy linear: schedule-steps and consistency: lambda-pi must be >= 0')
    if args.policy == 'consistency' and args.K < 2:
        raise UserError('--policy consistency compares two views of each image: it needs --K 2 or more')


def run_tag(args):
    """The flags of this family that name its default run directory."""
    return f'th{args.threshold:g}-{args.confidence}'


class Constant(Policy):
    """Keep an image iff its confidence is >= --threshold (sessions 407, 408)."""
    FLAGS = ('threshold', 'confidence')

    def mask(self, u, ctx):
        confidence = self.confidence(u)
        return confidence >= self.args.threshold, torch.full_like(confidence[0], self.args.threshold)


class Linear(Constant):
    """Sessions 79, 348, 352, 387: the threshold falls linearly from --threshold to threshold-end over
    schedule-steps steps, then stays there. The original's rates (left commented in the 401 and 408 code,
    main.py:528-542): "slow" max(0.9 - (epoch // 5) / 40, 0.5), at 0.5 after 80 of 300 epochs in steps of 0.025;
    "fast" a piecewise fall over the first 5 epochs. Here both are linear over the same span (80/300 and 5/300 of
    the run), the staircase and the piecewise shape left out."""
    FLAGS = ('threshold', 'threshold_end', 'schedule_steps', 'confidence')

    def mask(self, u, ctx):
        a = self.args
        span = a.schedule_steps or a.steps
        threshold = a.threshold + (a.threshold_end - a.threshold) * min(ctx.step, span) / span
        confidence = self.confidence(u)
        return confidence >= threshold, torch.full_like(confidence[0], threshold)


class Consistency(Constant):
    """Session 100 ("FixMixMatch" + Pi; the original's etc/Implemented_Papers/FixMixMatch/FixMixMatch_Pi/main.py), on
    its own schedule of 250 epochs laid over the run (epoch e = 1 + 250 * step / steps, whole epochs where the
    original counts them):
      threshold  --threshold until epoch 40, then 1/300 lower each epoch, never below 0.1     (main.py:412-416)
      kept       the images at or above it train as MixMatch's, but with the unsharpened    (main.py:439-440)
                 mean prediction as their label, and a constant lambda_u                   (main.py:504)
      below      a Pi-model loss: the mean squared difference of the softmax on two views  (main.py:91-95, 447-453)
                 (with gradient), from epoch 10 on and where more than one image is below, weighted
                 lambda-pi * lambda_u * min(1, e / 250)                                    (main.py:88, 502-503)
    Logged as policy_pi. The two views of every image go through the model, masked to the ones below, so that
    every process runs the same passes (the original passed the images below alone, a batch of varying size)."""
    FLAGS = ('threshold', 'lambda_pi', 'confidence')
    EPOCHS, FALL_FROM, FALL_PER_EPOCH, FLOOR, PI_FROM = 250, 40, 1 / 300, 0.1, 10

    def epoch(self, ctx):
        """The original's epoch at this step, counted from 1, and its whole number."""
        e = 1 + self.EPOCHS * ctx.step / ctx.steps
        return e, int(e)

    def select(self, u, ctx):
        whole = self.epoch(ctx)[1]
        start = self.args.threshold
        self.threshold = start if whole < self.FALL_FROM else max(start - (whole - self.FALL_FROM) * self.FALL_PER_EPOCH,
                                                                  self.FLOOR)
        confidence = self.confidence(u)
        unsharpened = Guess(u.images, u.index, u.hidden, u.views, u.mean_prob, u.mean_prob)
        return unsharpened, confidence >= self.threshold, torch.full_like(confidence[0], self.threshold)

    def loss(self, rows, u, ctx):
        term, loss_u = super().loss(rows, u, ctx)
        e, whole = self.epoch(ctx)
        self.pi = term.new_zeros(())
        if whole < self.PI_FROM:  # the same on every process: no pass is left waiting
            return term, loss_u
        below = (self.confidence(u) < self.threshold).float()
        below = below * (below.sum() > 1)  # the original skipped a single image
        views = u.views.view(-1, len(u.images), *u.views.shape[1:])[:2].flatten(0, 1)
        p = torch.softmax(ctx.forward(views), dim=1).view(2, len(u.images), -1)
        self.pi = ((p[0] - p[1]).pow(2).mean(dim=1) * below).sum() / below.sum().clamp(min=1)
        weight = self.args.lambda_pi * self.args.lambda_u * min(1.0, e / self.EPOCHS)
        return term + weight * self.pi, loss_u

    def log_values(self):
        return {'pi': self.pi.detach()}


POLICIES = {'constant': Constant, 'linear': Linear, 'consistency': Consistency}


# =========================================================================================================
# The same in the three scripts
# =========================================================================================================
def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, DEFAULTS)


if __name__ == '__main__':
    loop.main(get_args, METHOD, POLICIES, run_tag)
