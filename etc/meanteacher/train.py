"""Mean Teacher (Tarvainen & Valpola 2017) on the same data, model, EMA, evaluation and checkpoints as the three
methods: the EMA of the weights (decay 0.999, the model every script evaluates) is the teacher; the student
trains with cross-entropy on the labeled images and an MSE between its softmax and the teacher's on another
augmentation of every image of the step (labeled and unlabeled, as the reference), weighted by --lambda-u times
the sigmoid ramp-up exp(-5 (1 - t)^2), t = step / --rampup. No guessing over K views, no sharpening,
no mixup. The study tried it ("too slow"); here it runs on equal terms with MixMatch.

    python etc/meanteacher/train.py                                  # Mean Teacher with our optimizer (AdamW)
    python etc/meanteacher/train.py --evaluate runs/<run>/best.pt    # test top-1/top-5 of a checkpoint

The shared modules of this folder are the method folders' (identical copies); this file holds Mean Teacher's
flags and its training step, which the three scripts' loop (loop.py) runs.
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import torch
import torch.nn.functional as F

import flags
import loop
import semisup
from errors import UserError
from policy import Guess, Policy

METHOD = 'meanteacher'
# Shared flags of MixMatch's step that Mean Teacher's does not have: refused, and left out of --help.
NOT_READ = frozenset({'K', 'T', 'alpha', 'mix', 'loss', 'labeled_only', 'drop_unkept', 'train_acc', 'rampup_start',
                      'guess_views'})


# =========================================================================================================
# The method: Mean Teacher's flags and its consistency weight
# =========================================================================================================
# Mean Teacher's settings, one line a knob (with flags.DEFAULTS, what a run without flags uses).
DEFAULTS = {
    'lambda_u': 100.0,        # the consistency MSE's weight, averaged over classes (Mean Teacher's CIFAR-10)
    'rampup_steps': 16000,    # the sigmoid ramp-up's length: MixMatch's ramp length
    'loss': 'mse',
}


def add_method_flags(parser):
    return parser.add_argument_group('Mean Teacher')


def check_method_args(args):
    if args.ema_decay == 0:
        raise UserError('--ema-decay 0: Mean Teacher\'s teacher is the EMA of the weights; give a decay in (0, 1)')


def run_tag(args):
    return f'rampup{args.rampup_steps}'


class Consistency(Policy):
    """Every image trains; the weight rises as the reference's sigmoid ramp-up, exp(-5 (1 - t)^2), from
    exp(-5) of --lambda-u at step 0 to all of it at --rampup STEPS."""

    def lambda_u(self, step):
        a = self.args
        t = 1.0 if a.rampup_steps == 0 else min(step, a.rampup_steps) / a.rampup_steps
        return a.lambda_u * math.exp(-5.0 * (1.0 - t) ** 2)


POLICIES = {'consistency': Consistency}


def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, DEFAULTS, NOT_READ)


# =========================================================================================================
# The training step
# =========================================================================================================
class MeanTeacherStep(loop.Step):
    """One Mean Teacher step: the student's forward of [labeled, unlabeled] (one augmentation), the teacher's of
    another augmentation of the same images (batch statistics, as the reference's teacher in train mode; its
    running statistics are left alone), cross-entropy on the labeled rows plus the weighted consistency MSE."""

    def __call__(self, step):
        return self.train(*self.next_batches(step))

    def train(self, x_l, y_l, x_u, i_u, hidden, ctx):
        rt, args, policy, net = self.s.rt, self.s.args, self.s.policy, self.s.net
        B, teacher = len(x_l), self.s.ema.module
        images = torch.cat([x_l, x_u])
        with rt.autocast():
            logits = net(loop.augment_views(images, args).contiguous(memory_format=rt.memory_format)).float()
        was_training = teacher.training
        teacher.train()
        with torch.no_grad(), rt.autocast(), semisup.batch_statistics_only(teacher):
            teacher_prob = torch.softmax(
                teacher(loop.augment_views(images, args).contiguous(memory_format=rt.memory_format)).float(), dim=1)
        teacher.train(was_training)
        loss_x = F.cross_entropy(logits[:B], y_l)
        loss_u = (torch.softmax(logits, dim=1) - teacher_prob).pow(2).mean()  # over images and classes
        loss = loss_x + policy.lambda_u(ctx.step) * loss_u
        self.update(loss)
        train_acc = self.count(logits[:B], y_l)  # the labeled rows are unmixed: no extra forward needed
        u = Guess(x_u, i_u, hidden, x_u, teacher_prob[B:], teacher_prob[B:])
        keep, threshold = policy.mask(u, ctx)
        known = keep & (hidden >= 0)
        return {'loss': loss.detach(), 'loss_x': loss_x.detach(), 'loss_u': loss_u.detach(), 'train_acc': train_acc,
                'pl_correct': ((teacher_prob[B:].argmax(dim=1) == hidden) & known).sum(), 'pl_count': known.sum(),
                'mask_ratio': keep.float().mean(), 'threshold': threshold, 'confidence': policy.confidence(u).mean()}


if __name__ == '__main__':
    loop.main(get_args, METHOD, POLICIES, run_tag, MeanTeacherStep)
