"""SimCLR pretraining (Chen et al. 2020; the study's notes mention trying it): the network learns to tell which
two augmented views come from the same training image, from every training image without its label (labeled and
unlabeled alike; the validation images are held out as the scripts hold them out). Each step draws two views of
every image of the batch (2 x --batch-size rows, one forward), maps the backbone's features through a projection
MLP g (Linear-ReLU-Linear) and trains with the NT-Xent loss: each view's positive is the other view of its image,
the other 2N - 2 views of the batch are its negatives. Its best.pt starts any script:

    python etc/simclr/train.py --out runs/simclr                        # pretrain (the default schedule)
    python adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce --init runs/simclr/best.pt   # then the method

The model is built with the data's classes, so --init loads every weight; the classifier head is never trained
(it is frozen at its random initialization: SimCLR has no classifier), so a method starts from the pretrained
backbone and an untrained head, as from a fresh one. The projection head is saved but dropped by --init.

Views, batched on the device: random-resized-crop + flip with crop areas in [--crop-area, 1] (0.2 as MoCo's code,
instead of SimCLR's 0.08, because our images are small), then, in place of SimCLR's colour distortion (colour
jitter and grayscale, which do nothing useful to grey images), RandAugment with --view-ops ops per view at a random
magnitude each (FixMatch's strong augmentation without CutOut). No Gaussian blur (SimCLR leaves it out on CIFAR-10).
--temperature 0.5 is SimCLR's CIFAR-10 setting (batch 512), kept for our small images and batches; its ImageNet
default, 0.1, goes with batches of 4096. --evaluate is refused: it measures the classifier head, untrained here.
Other deviations: AdamW (the shared optimizer) instead of LARS, FixMatch's cosine schedule without warm-up instead of
a warm-up and a cosine to zero, the EMA of the weights is evaluated and saved (SimCLR has none), and under torchrun
each process contrasts its own batch with its own BatchNorm statistics (SimCLR gathers negatives and BatchNorm
statistics across devices).

Evaluation (what picks best.pt): contrastive retrieval accuracy on up to 512 validation images (and as many test
images). Each image gets two views drawn from a fixed seed (the same views at every evaluation and in every run;
the training RNG stream is left untouched); top-1 is the percentage of the 2n views whose nearest other view, by
cosine similarity of the backbone features (what --init carries on, not the projection), is its own pair; top-5
counts the pair among the 5 nearest. The log's val/test top-1 and top-5 are these accuracies, val/test loss the
NT-Xent loss of those views at --temperature, loss_x the training NT-Xent loss and train_acc the same retrieval
accuracy on the training batches (projections, as the loss sees them). No label is read.
The shared modules of this folder are the method folders' (identical copies).
"""
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import flags
import loop
import models
from errors import UserError
from models import build_model
from policy import Policy

METHOD = 'simclr'
# Shared flags that pretraining does not read: the semi-supervised step's, the augmentation flags (the views have
# their own pipeline and flags) and --evaluate (it measures the classifier head, which SimCLR never trains).
NOT_READ = frozenset({'K', 'T', 'alpha', 'mix', 'loss', 'lambda_u', 'rampup_steps', 'rampup_start', 'labeled_only',
                      'drop_unkept', 'train_acc', 'unlabeled_batch_size', 'rot_weight', 'policy', 'augment',
                      'randaugment', 'augmix', 'cutout', 'evaluate', 'guess_views'})
EVAL_IMAGES = 512  # images of the validation (and test) set whose views the retrieval accuracy ranks
EVAL_SEED = 0      # the seed of their views: the same views at every evaluation, whatever --seed


# SimCLR's settings, one line a knob (with flags.DEFAULTS, what a run without flags uses). The default run
# (Fashion-MNIST, WRN-28-2, bf16) is sized for about an hour on 2 CPU cores: a step of 256 images (512 views) took
# 1.6 s on one core of a 2-core AMD EPYC (AVX512-BF16) shared with other jobs, where the demo's step takes 0.54 x
# its one-core time on 2 free cores; so ~0.9 s/step, 4000 steps, 17 epochs.
DEFAULTS = {
    'temperature': 0.5,         # SimCLR's on CIFAR-10 (0.1 on ImageNet)
    'projection_dim': 128,      # SimCLR's
    'projection_hidden': None,  # the backbone's feature size, as SimCLR
    'crop_area': 0.2,           # MoCo's (SimCLR: 0.08)
    'view_ops': 2,              # FixMatch's RandAugment ops
    'batch_size': 256,          # images per step, two views each (SimCLR: 512 on CIFAR-10)
    'steps': 4000,              # (SimCLR on CIFAR-10: 1000 epochs of 512 images)
    'eval_every': 500,
    'lr_schedule': 'cosine',    # SimCLR: cosine decay; here FixMatch's
    'loss': 'ce',               # not read; names the default run directory
}


def add_method_flags(parser):
    g = parser.add_argument_group('SimCLR pretraining')
    g.add_argument('--temperature', type=float,
                   help='NT-Xent temperature tau on cosine similarities (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet)')
    g.add_argument('--projection-dim', type=int,
                   help='output size of the projection MLP g, on which the loss is taken (SimCLR: 128)')
    g.add_argument('--projection-hidden', type=int,
                   help='hidden units of g, Linear-ReLU-Linear (the backbone\'s feature size unless given, as SimCLR)')
    g.add_argument('--crop-area', type=float,
                   help='smallest crop of a view, a fraction of the image area (MoCo: 0.2; SimCLR: 0.08)')
    g.add_argument('--view-ops', type=int,
                   help='RandAugment ops per view, each at a random magnitude: the colour distortion (FixMatch: 2)')
    return g


def check_method_args(args):
    if args.temperature <= 0:
        raise UserError(f'--temperature {args.temperature:g} must be > 0')
    if args.projection_dim < 1 or (args.projection_hidden is not None and args.projection_hidden < 1):
        raise UserError('--projection-dim and --projection-hidden must be at least 1')
    if not 0 < args.crop_area <= 1:
        raise UserError(f'--crop-area {args.crop_area:g} must be in (0, 1]')
    if args.view_ops < 0:
        raise UserError(f'--view-ops {args.view_ops} must be >= 0 (0: crop and flip only)')
    if args.batch_size < 2:
        raise UserError('--batch-size must be at least 2: the other images of the batch are the negatives')


def run_tag(args):
    return f'pretrain-tau{args.temperature:g}'


class NoPseudoLabels(Policy):
    """No pseudo-labels: the interface's empty policy keeps the checkpoint format. FLAGS: SimCLR's own flags,
    which the shared parser refuses unless the policy in force lists them."""
    FLAGS = ('temperature', 'projection_dim', 'projection_hidden', 'crop_area', 'view_ops')


POLICIES = {'none': NoPseudoLabels}


def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, DEFAULTS, NOT_READ)


# =========================================================================================================
# The method: views, projection head, NT-Xent
# =========================================================================================================
def projection_head(feature_dim, hidden, out):
    """SimCLR's g: Linear-ReLU-Linear from the backbone's features (hidden None: as wide as the features)."""
    hidden = hidden or feature_dim
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def make_model(args, in_channels, mean, std):
    """The backbone with the data's classifier head (frozen: never trained), the projection head g, and an
    identity head that hands out the backbone's features (for evaluation)."""
    heads = {'projection': functools.partial(projection_head, hidden=args.projection_hidden, out=args.projection_dim),
             'features': lambda feature_dim: nn.Identity()}
    model = build_model(args.arch, args.num_classes, in_channels, mean, std, args.bn_momentum, args.pretrained,
                        args.download, heads=heads)
    head = models.head_prefix(args.arch)
    for name, p in model.named_parameters():
        if name.startswith(head):  # no gradient, so no update, no weight decay, and nothing for DDP to wait for
            p.requires_grad_(False)
    return model


def two_views(images, args):
    """Two independently augmented views of every image: rows [view a of each image, view b of each image].
    Crop and flip, then RandAugment at random magnitudes; per image, no Python loop over images."""
    x = images.repeat(2, 1, 1, 1)
    x = augment.random_resized_crop_flip(x, scale=(args.crop_area, 1.0))
    return augment.randaugment(x, args.view_ops, None) if args.view_ops else x


def contrastive_logits(z, temperature):
    """Cosine similarity / temperature between every two of the 2N rows of z (rows i and i + N are the two views
    of image i), the self-similarity masked out with -inf; and each row's positive (the other view). fp32."""
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=1)
        n2 = len(z)
        self_pair = torch.eye(n2, dtype=torch.bool, device=z.device)
        logits = (z @ z.T / temperature).masked_fill(self_pair, float('-inf'))
    positives = torch.arange(n2, device=z.device).roll(n2 // 2)
    return logits, positives


def nt_xent(z, temperature):
    """SimCLR's NT-Xent loss: the mean over all 2N views of the cross-entropy of picking the view's positive
    among the 2N - 1 other views by cosine similarity / temperature. Computed in fp32."""
    logits, positives = contrastive_logits(z, temperature)
    return F.cross_entropy(logits, positives)


def project(net, rt, views, heads=('projection',)):
    """The named heads' outputs for a batch of views, in fp32 (one backbone pass, under autocast)."""
    with rt.autocast():
        _, outputs = net(views.contiguous(memory_format=rt.memory_format), heads=heads)
    return [o.float() for o in outputs]


@torch.no_grad()
def retrieval(model, images, args, rt):
    """Contrastive retrieval on up to EVAL_IMAGES images, in fp32 (see the module's docstring): two views each
    from EVAL_SEED, drawn without touching the training RNG; top-1/top-5 (%) of a view's pair among the nearest
    other views by cosine similarity of the backbone features, and the NT-Xent loss of the projections."""
    images = images[:EVAL_IMAGES]
    with torch.random.fork_rng(devices=[rt.device] if rt.device.type == 'cuda' else []):
        torch.manual_seed(EVAL_SEED)
        views = two_views(images, args)
    was_training = model.training
    model.eval()
    parts = [model(chunk.contiguous(memory_format=rt.memory_format), heads=('features', 'projection'))[1]
             for chunk in views.split(args.eval_batch_size)]
    model.train(was_training)
    h, z = (torch.cat([p[k].float() for p in parts]) for k in (0, 1))
    similarity, positives = contrastive_logits(h, 1.0)
    nearer = (similarity > similarity.gather(1, positives[:, None])).sum(dim=1)  # other views nearer than the pair
    count = len(positives)
    return {'top1': 100.0 * (nearer == 0).sum().item() / count, 'top5': 100.0 * (nearer < 5).sum().item() / count,
            'loss': nt_xent(z, args.temperature).item(), 'correct': int((nearer == 0).sum()), 'count': count}


def evaluate_and_log(eval_model, eval_sets, w, step, log, meta, args, rt, wants_test):
    """The log record of one evaluation, with the fields metrics.evaluate_and_log writes (so the tools that read
    log.jsonl and checkpoint.Progress work unchanged), top-1/top-5 being the retrieval accuracies. Returns
    (record, the val (correct, count), or None without val)."""
    record = {'step': step, 'loss': w['loss'], 'loss_x': w['loss_x'], 'loss_u': w['loss_u'], 'lambda_u': 0.0,
              'mask_ratio': None, 'threshold': None, 'pseudo_label_acc': None, 'confidence': None,
              'train_acc': w['train_acc'], 'lr': w.get('lr'), 'loss_rot': None}
    val = None
    for name, images in eval_sets.items():
        measured = images is not None and len(images) and (name != 'test' or wants_test(record.get('val_top1')))
        r = retrieval(eval_model, images, args, rt) if measured else None
        record |= {f'{name}_top1': r and r['top1'], f'{name}_top5': r and r['top5'], f'{name}_loss': r and r['loss']}
        if name == 'val' and r is not None:
            val = (r['correct'], max(r['count'], 1))
    record['ms_per_step'] = w['ms_per_step']
    log.write(record | meta)
    return record, val


class SimCLRStep(loop.Step):
    """One step: two views of every image, one forward, the NT-Xent loss on the projections."""
    STREAMS = {'train': 'batch_size'}
    NONFINITE_HINT = 'try a lower --lr, a higher --temperature, or --amp off'
    SUMMARY_NOTE = (f'(top-1/top-5 here: how often a view\'s nearest other view is its pair, among two fixed views of up '
                    f'to {EVAL_IMAGES} images; the classifier head is untrained)')

    @staticmethod
    def check_data(ds, split):
        pass  # no unlabeled image is needed: every training image is one

    add_sets = staticmethod(loop.Step.every_training_image)

    @staticmethod
    def describe_data(args, ds, sets):
        return (f'data {args.dataset}: {len(sets["train"][0])} training images (labels unused), '
                + ', '.join(f'{0 if x is None else len(x)} {k}' for k, (x, _) in sets.items() if k in ('val', 'test'))
                + f', {tuple(ds.train_images.shape[1:])} images; views: crop area {args.crop_area:g}-1 + flip'
                + (f' + randaugment {args.view_ops} ops' if args.view_ops else ''))

    @staticmethod
    def build_model(args, ds, mean, std):
        return make_model(args, ds.train_images.shape[1], mean, std)

    @staticmethod
    def eval_sets(sets):
        return {k: sets[k][0] for k in ('val', 'test')}

    def progress_line(self, w):
        return f'nt-xent {w["loss_x"]:.3f}  pair found {w["train_acc"]:.1f}%  {w["ms_per_step"]:.0f} ms/step'

    def evaluate(self, w, step, log, wants_test, eval_sets):
        s = self.s
        return evaluate_and_log(s.eval_model, eval_sets, w, step, log, s.meta, s.args, s.rt, wants_test)

    def __call__(self, step):
        s = self.s
        images = s.sets['train'][0][s.streams['train'].next()]
        z, = project(s.net, s.rt, two_views(images, s.args))
        logits, positives = contrastive_logits(z, s.args.temperature)
        loss = F.cross_entropy(logits, positives)
        self.update(loss)
        zero = torch.zeros((), device=loss.device)
        return {'loss': loss.detach(), 'loss_x': loss.detach(), 'loss_u': zero,
                'train_acc': self.count(logits.detach(), positives)}


if __name__ == '__main__':
    loop.main(get_args, METHOD, POLICIES, run_tag, SimCLRStep)
