"""FixMatch (Sohn et al. 2020) on the same data, model, EMA, evaluation and checkpoints as the three methods:
a weakly augmented view (crop and flip) of each unlabeled image gives a hard pseudo-label where its confidence
reaches --threshold; a strongly augmented view (RandAugment with a random magnitude per op, then CutOut) trains
on it with cross-entropy. No mixup, no sharpening, no K views. The study tried it and found it "too slow"; here
it is on equal terms with MixMatch, and its cost is reported (--batch-size 64,448: 7 x 64, FixMatch's mu,
so a step forwards 64 + 2 x 448 images against MixMatch's 64 + 2 x 64 guessed and 192 trained).

    python etc/fixmatch/train.py                                  # the paper's CIFAR settings, scaled to our steps
    python etc/fixmatch/train.py --evaluate runs/<run>/best.pt    # test top-1/top-5 of a checkpoint

The shared modules of this folder are the method folders' (identical copies); this file holds FixMatch's flags
and its training step, which the three scripts' loop (loop.py) runs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import torch
import torch.nn.functional as F

import augment
import flags
import loop
from errors import UserError
from policy import Guess, Policy

METHOD = 'fixmatch'
# Shared flags of MixMatch's step that FixMatch's does not have: refused, and left out of --help.
NOT_READ = frozenset({'K', 'T', 'alpha', 'mix', 'loss', 'labeled_only', 'drop_unkept', 'train_acc', 'randaugment',
                      'augmix', 'cutout', 'guess_views'})


# =========================================================================================================
# The method: FixMatch's flags and its pseudo-label rule
# =========================================================================================================
# FixMatch's CIFAR-10 settings, one line a knob (with flags.DEFAULTS, what a run without flags uses); the EMA of
# the weights (0.999) is evaluated, as for the three methods.
DEFAULTS = {
    'threshold': 0.95,
    'strong_ops': 2,
    'strong_cutout': 0.5,
    'optimizer': 'sgd',
    'nesterov': True,
    'lr': 0.03,
    'wd': 5e-4,
    'lr_schedule': 'cosine',        # cos(7 pi step / 16 steps)
    'loss': 'ce',
    'lambda_u': 1.0,
    'unlabeled_batch_size': 448,    # mu B = 7 x 64
}


def add_method_flags(parser):
    g = parser.add_argument_group('FixMatch')
    g.add_argument('--threshold', type=float,
                   help='keep an unlabeled image iff the weak view\'s top probability is >= this (FixMatch: 0.95)')
    g.add_argument('--strong-ops', type=int,
                   help='RandAugment ops per strong view, each at a magnitude drawn per image (FixMatch: 2)')
    g.add_argument('--strong-cutout', type=float,
                   help='CutOut after RandAugment, side as a fraction of the image side (FixMatch: 0.5; 0: off)')
    return g


def check_method_args(args):
    if not 0 < args.threshold <= 1:
        raise UserError(f'--threshold {args.threshold} must be in (0, 1]')
    if args.strong_ops < 0 or not 0 <= args.strong_cutout <= 1:
        raise UserError('--strong-ops must be >= 0 and --strong-cutout in [0, 1]')


def run_tag(args):
    return f'th{args.threshold:g}-mu{args.unlabeled_batch_size // args.batch_size}'


class Confidence(Policy):
    """FixMatch's rule: keep an image iff the weak view's top probability reaches --threshold."""
    FLAGS = ('threshold',)

    def mask(self, u, ctx):
        threshold = u.mean_prob.new_full((), self.args.threshold)
        return self.confidence(u) >= threshold, threshold


POLICIES = {'confidence': Confidence}


def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, DEFAULTS, NOT_READ)


# =========================================================================================================
# The training step
# =========================================================================================================
def strong_views(weak, args):
    """RandAugment (--strong-ops, a magnitude drawn per image and op) then CutOut, per image."""
    strong = augment.randaugment(weak, args.strong_ops, None) if args.strong_ops else weak
    side = int(args.strong_cutout * min(weak.shape[-2:]))
    return augment.cutout(strong, side) if side else strong


class FixMatchStep(loop.Step):
    """One FixMatch step: one forward of [weak labeled, weak unlabeled, strong unlabeled] (BatchNorm sees them
    together, as the reference), cross-entropy on the labeled rows, and on the strong views of the kept images
    towards the weak view's argmax, averaged over all unlabeled images (FixMatch's normalization)."""

    @staticmethod
    def describe_data(args, ds, sets):
        return (f'data {args.dataset}: ' + ', '.join(f'{0 if x is None else len(x)} {k}' for k, (x, _) in sets.items())
                + f', {args.num_classes} classes, {tuple(ds.train_images.shape[1:])} images, weak {args.augment_kind}, '
                  f'strong {args.augment_kind} + randaugment {args.strong_ops} ops + cutout {args.strong_cutout:g}')

    def __call__(self, step):
        return self.train(*self.next_batches(step))

    def train(self, x_l, y_l, x_u, i_u, hidden, ctx):
        rt, args, policy, net = self.s.rt, self.s.args, self.s.policy, self.s.net
        B, C = len(x_l), args.num_classes
        weak_l, weak_u = augment.augment(x_l, args.augment_kind), augment.augment(x_u, args.augment_kind)
        strong_u = strong_views(weak_u, args)
        with rt.autocast():
            logits = net(torch.cat([weak_l, weak_u, strong_u]).contiguous(memory_format=rt.memory_format)).float()
        logits_l, logits_weak, logits_strong = logits.split([B, len(x_u), len(x_u)])
        prob = torch.softmax(logits_weak.detach(), dim=1)
        pseudo = prob.argmax(dim=1)
        u = Guess(x_u, i_u, hidden, strong_u, prob, F.one_hot(pseudo, C).float())
        keep, threshold = policy.mask(u, ctx)
        loss_x = F.cross_entropy(logits_l, y_l)
        loss_u = (F.cross_entropy(logits_strong, pseudo, reduction='none') * keep.float()).mean()
        loss = loss_x + policy.lambda_u(ctx.step) * loss_u
        self.update(loss)
        known = keep & (hidden >= 0)
        return {'loss': loss.detach(), 'loss_x': loss_x.detach(), 'loss_u': loss_u.detach(),
                'train_acc': self.count(logits_l, y_l),  # the labeled rows are unmixed: no extra forward needed
                'pl_correct': ((pseudo == hidden) & known).sum(), 'pl_count': known.sum(),
                'mask_ratio': keep.float().mean(), 'threshold': threshold, 'confidence': policy.confidence(u).mean()}


if __name__ == '__main__':
    loop.main(get_args, METHOD, POLICIES, run_tag, FixMatchStep)
