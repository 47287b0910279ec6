"""RotNet pretraining (Gidaris et al. 2018; the study's session 203): the network learns which of four rotations
(0, 90, 180, 270 degrees) each training image was turned by, from every training image without its label
(labeled and unlabeled alike; the validation images are held out as the scripts hold them out). Each step
turns every image of the batch all four ways (4 x --batch-size rows) and trains the 4-way classifier with
cross-entropy. Its best.pt (best rotation accuracy on the validation images) starts any script:

    python etc/rotnet/train.py --out runs/rotnet                        # pretrain (the default schedule)
    python adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce --init runs/rotnet/best.pt   # then the method

--init loads the backbone and replaces the 4-way head by a classifier of the data's classes (it says so). The
log's loss_x is the rotation loss and its val/test top-1 the rotation accuracy on the validation/test images.
The shared modules of this folder are the method folders' (identical copies).
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
from policy import Policy

METHOD = 'rotnet'
ROTATIONS = ('0', '90', '180', '270')  # the classes: counter-clockwise quarter turns
# Shared flags of the semi-supervised step that pretraining does not have: refused, and left out of --help.
NOT_READ = frozenset({'K', 'T', 'alpha', 'mix', 'loss', 'lambda_u', 'rampup_steps', 'rampup_start', 'labeled_only',
                      'drop_unkept', 'train_acc', 'unlabeled_batch_size', 'rot_weight', 'policy',
                      'guess_views'})


DEFAULTS = {'loss': 'ce'}  # not read; names the default run directory


def add_method_flags(parser):
    return parser.add_argument_group('RotNet pretraining')


def check_method_args(args):
    pass


POLICIES = {'none': Policy}  # no pseudo-labels; the interface's empty policy keeps the checkpoint format


def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, DEFAULTS, NOT_READ)


def all_rotations(images):
    """Every image turned all four ways: rows [all at 0, all at 90, ...], and their rotation labels."""
    turns = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return augment.rotate90(images.repeat(4, 1, 1, 1), turns), turns


class RotationStep(loop.Step):
    """One step: every image of the batch augmented (crop, flip and the augmentation flags), turned four ways,
    one forward, cross-entropy on the rotation."""
    STREAMS = {'train': 'batch_size'}

    @staticmethod
    def classes(ds):
        return ROTATIONS

    @staticmethod
    def check_data(ds, split):
        if ds.train_images.shape[-1] != ds.train_images.shape[-2]:
            raise UserError(f'RotNet turns images by quarter turns: they must be square, not '
                            f'{tuple(ds.train_images.shape[-2:])}')

    add_sets = staticmethod(loop.Step.every_training_image)

    @staticmethod
    def describe_data(args, ds, sets):
        return (f'data {args.dataset}: {len(sets["train"][0])} training images (labels unused), '
                + ', '.join(f'{0 if x is None else len(x)} {k}' for k, (x, _) in sets.items() if k in ('val', 'test'))
                + f', {tuple(ds.train_images.shape[1:])} images, augment {args.augment_kind}, 4 rotations each')

    @staticmethod
    def eval_sets(sets):
        return {k: all_rotations(sets[k][0]) if sets[k][0] is not None and len(sets[k][0]) else sets[k]
                for k in ('val', 'test')}

    def lambda_u(self, step):
        return 0.0

    def progress_line(self, w):
        return f'rotation loss {w["loss_x"]:.3f}  rotation acc {w["train_acc"]:.1f}  {w["ms_per_step"]:.0f} ms/step'

    def __call__(self, step):
        s = self.s
        images = s.sets['train'][0][s.streams['train'].next()]
        x, turns = all_rotations(loop.augment_views(images, s.args))
        with s.rt.autocast():
            logits = s.net(x.contiguous(memory_format=s.rt.memory_format)).float()
        loss = F.cross_entropy(logits, turns)
        self.update(loss)
        zero = torch.zeros((), device=loss.device)
        return {'loss': loss.detach(), 'loss_x': loss.detach(), 'loss_u': zero, 'train_acc': self.count(logits, turns)}


if __name__ == '__main__':
    loop.main(get_args, METHOD, POLICIES, lambda args: 'pretrain', RotationStep)
