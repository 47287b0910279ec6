"""MixMatch (Berthelot et al. 2019), the paper's baseline: every unlabeled image trains. K augmentations of each
unlabeled image are guessed (mean softmax, sharpened), labeled and unlabeled images are mixed up, and the model
trains with cross-entropy on the labeled rows and an MSE on the unlabeled rows, whose weight ramps up linearly
over --rampup.

    python mixmatch/train.py --lambda-u 5.66 --rampup 4151:0.05  # the paper's MixMatch (session 405): its weight
                                                                 # per class, its ramp (for the default --steps)
    python mixmatch/train.py                                  # MixMatch's own: lambda_u 75, ramped over 16,000 steps
    python mixmatch/train.py --labeled-only                   # the tables' baseline: the labeled images alone
    python mixmatch/train.py --evaluate runs/<run>/best.pt    # test top-1/top-5 of a checkpoint

This file is the method: the family's flags and policy classes. The run around them (guess, step, loop,
checkpoints) is loop.py, so `diff mixmatch/train.py adaptive/train.py` shows what the thresholded methods change.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import flags
import loop
import semisup
from errors import UserError
from policy import Policy

METHOD = 'mixmatch'
# This family's defaults, one line a knob: with flags.DEFAULTS (the shared ones), what a run without flags uses.
DEFAULTS = {
    'policy': 'all',
    'loss': 'mse',            # MixMatch's; --lambda-u follows it: 75
    'rampup_steps': 16000,    # MixMatch's 16 "epochs" of 1024 steps
    # the policies' own settings: --policy mixed-loss:mixed-threshold=0.9,lambda-t=2
    'mixed_threshold': 0.9,   # mixed-loss: the second term's rows are those whose image reaches it (the notes')
    'lambda_t': None,         # mixed-loss: the second term's constant weight (None: --lambda-u, as the original)
}


def add_method_flags(parser):
    return parser.add_argument_group('pseudo-label policy: none (every unlabeled image trains)')


def check_method_args(args):
    if args.drop_unkept:
        raise UserError('--drop-unkept has no effect: MixMatch keeps every unlabeled image')
    if not 0 < args.mixed_threshold <= 1 or (args.lambda_t or 0) < 0:
        raise UserError('--policy mixed-loss: mixed-threshold must be in (0, 1] and lambda-t >= 0')


def run_tag(args):
    """The flags of this family that name its default run directory."""
    return f'rampup{args.rampup_steps}'


class KeepAll(Policy):
    """MixMatch: every guessed image trains, with the unlabeled weight ramped up over --rampup."""


class MixedLoss(KeepAll):
    """Session 409: MixMatch's term over every image with its ramped weight, plus a second term of the same
    loss, with the constant weight lambda-t, over the mixed rows whose own image's confidence reaches
    mixed-threshold (logged as policy_loss_t)."""
    FLAGS = ('mixed_threshold', 'lambda_t')

    def loss(self, rows, u, ctx):
        term, loss_u = super().loss(rows, u, ctx)
        confident = rows.keep & (self.confidence(u)[rows.image] >= self.args.mixed_threshold)
        self.loss_t = semisup.unlabeled_loss(rows.logits, rows.targets, confident, self.args.loss)
        lambda_t = self.args.lambda_u if self.args.lambda_t is None else self.args.lambda_t
        return term + lambda_t * self.loss_t, loss_u

    def log_values(self):
        return {'loss_t': self.loss_t.detach()}


POLICIES = {'all': KeepAll, 'mixed-loss': MixedLoss}


# =========================================================================================================
# The same in the three scripts
# =========================================================================================================
def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, DEFAULTS)


if __name__ == '__main__':
    loop.main(get_args, METHOD, POLICIES, run_tag)
