"""FixMatch (Sohn et al. 2020) on the same data, model, EMA, evaluation and checkpoints as the three methods:
a weakly augmented view (crop and flip) of each unlabeled image gives a hard pseudo-label where its confidence
reaches --threshold; a strongly augmented view (RandAugment with a random magnitude per op, then CutOut) trains
on it with cross-entropy. No mixup, no sharpening, no K views. The study tried it and found it "too slow"; here
it is on equal terms with MixMatch, and its cost is reported (--unlabeled-batch-size 448 = 7 x 64, FixMatch's mu,
so a step forwards 64 + 2 x 448 images against MixMatch's 64 + 2 x 64 guessed and 192 trained).

    python etc/fixmatch/train.py                                  # the paper's CIFAR settings, scaled to our steps
    python etc/fixmatch/train.py --evaluate runs/<run>/best.pt    # test top-1/top-5 of a checkpoint

The shared modules of this folder are the method folders' (identical copies); this file holds FixMatch's flags,
its training step and the loop, which is the three scripts' loop with that step.
"""
import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import torch
import torch.nn.functional as F

import augment
import checkpoint
import data
import flags
import metrics
import semisup
from models import UserError, build_model
from policy import Context, Guess, Policy
from runtime import Runtime, StopRequest, fail, seed_everything

METHOD = 'fixmatch'
# Shared flags of MixMatch's step that FixMatch's does not have: refused, and left out of --help.
NOT_READ = frozenset({'K', 'T', 'alpha', 'mix', 'loss', 'labeled_only', 'drop_unkept', 'train_acc', 'randaugment',
                      'augmix', 'cutout', 'guess_views'})


# =========================================================================================================
# The method: FixMatch's flags and its pseudo-label rule
# =========================================================================================================
def add_method_flags(parser):
    g = parser.add_argument_group('FixMatch')
    g.add_argument('--threshold', type=float, default=0.95,
                   help='keep an unlabeled image iff the weak view\'s top probability is >= this (FixMatch: 0.95)')
    g.add_argument('--strong-ops', type=int, default=2,
                   help='RandAugment ops per strong view, each at a magnitude drawn per image (FixMatch: 2)')
    g.add_argument('--strong-cutout', type=float, default=0.5,
                   help='CutOut after RandAugment, side as a fraction of the image side (FixMatch: 0.5; 0: off)')
    # FixMatch's CIFAR-10 settings; the EMA of the weights (0.999) is evaluated, as for the three methods
    flags.override(parser, optimizer=('sgd', 'adam: AdamW; sgd: SGD with momentum (FixMatch: sgd)'),
                   nesterov=(True, 'SGD with Nesterov momentum (FixMatch: yes)'),
                   lr=(0.03, 'learning rate (FixMatch: 0.03)'), wd=(5e-4, 'weight decay (FixMatch: 5e-4)'),
                   lr_schedule=('cosine', 'constant, multistep, exponential, cosine (FixMatch: cos(7 pi step / 16 steps))'),
                   lambda_u=(1.0, 'weight of the unlabeled cross-entropy (FixMatch: 1)'),
                   unlabeled_batch_size=(448, 'unlabeled images per step and process (FixMatch: mu B = 7 x 64)'),
                   loss=('ce', argparse.SUPPRESS))
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
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, NOT_READ)


# =========================================================================================================
# The training step
# =========================================================================================================
def strong_views(weak, args):
    """RandAugment (--strong-ops, a magnitude drawn per image and op) then CutOut, per image."""
    strong = augment.randaugment(weak, args.strong_ops, None) if args.strong_ops else weak
    side = int(args.strong_cutout * min(weak.shape[-2:]))
    return augment.cutout(strong, side) if side else strong


def train_step(net, ema, optimizer, rt, policy, train_acc, x_l, y_l, x_u, i_u, hidden, ctx, args):
    """One FixMatch step: one forward of [weak labeled, weak unlabeled, strong unlabeled] (BatchNorm sees them
    together, as the reference), cross-entropy on the labeled rows, and on the strong views of the kept images
    towards the weak view's argmax, averaged over all unlabeled images (FixMatch's normalization)."""
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
    rt.backward_and_step(loss, optimizer)
    if ema is not None:
        ema.update_parameters(net)

    correct = (logits_l.argmax(dim=1) == y_l).sum()  # the labeled rows are unmixed: no extra forward needed
    train_acc.add(*rt.all_reduce(torch.stack([correct, torch.full_like(correct, B)])))
    num, den = train_acc.fraction()
    known = keep & (hidden >= 0)
    return {'loss': loss.detach(), 'loss_x': loss_x.detach(), 'loss_u': loss_u.detach(),
            'train_acc': 100.0 * num / den, 'pl_correct': ((pseudo == hidden) & known).sum(), 'pl_count': known.sum(),
            'mask_ratio': keep.float().mean(), 'threshold': threshold, 'confidence': policy.confidence(u).mean()}


def make_optimizer(model, args, device):
    fused = {'fused': True} if device.type in ('cuda', 'cpu') else {}
    if args.optimizer == 'adam':
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, **fused)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd,
                           nesterov=args.nesterov, **fused)


# =========================================================================================================
# The loop: the three scripts' loop, with FixMatch's step
# =========================================================================================================
def train(args, rt):
    say = print if rt.is_main else (lambda *a, **k: None)
    run = checkpoint.open_run(args, METHOD, run_tag(args), rt)  # decided before anything is written
    done = checkpoint.finished(run, args)
    if done:
        say(done)
        return
    init = checkpoint.load_init(args.init, args.arch) if args.init and run.ckpt is None else None  # before the data
    say(f'git {metrics.git_sha()}  torch {torch.__version__}  device {rt.describe()}  amp {rt.precision}')
    say('args ' + ' '.join(f'{k}={v}' for k, v in sorted(vars(args).items())), flush=True)

    # ---- data: uint8 tensors on the training device
    seed_everything(args.seed)
    ds, split = data.load_data(args)
    args.num_classes = len(ds.classes)
    if run.ckpt is not None and run.ckpt['num_classes'] != args.num_classes:
        raise UserError(f'--resume {run.resume}: checkpoint has {run.ckpt["num_classes"]} classes, the data '
                        f'{args.num_classes}')
    if len(split['unlabeled']) == 0:
        raise UserError('no unlabeled images left: lower --n-labeled / --n-val or add unlabeled images')
    dev = rt.device
    sets = data.on_device(ds, split, dev)
    (x_lab, y_lab), (x_unl, y_unl) = sets['labeled'], sets['unlabeled']
    args.augment_kind = augment.choose(args.augment, ds.train_images.shape[-1])
    say(f'data {args.dataset}: ' + ', '.join(f'{0 if x is None else len(x)} {k}' for k, (x, _) in sets.items())
        + f', {args.num_classes} classes, {tuple(ds.train_images.shape[1:])} images, weak {args.augment_kind}, '
          f'strong {args.augment_kind} + randaugment {args.strong_ops} ops + cutout {args.strong_cutout:g}', flush=True)
    for line in data.notes(ds, split):
        say(line, flush=True)

    # ---- model, EMA, optimizer, samplers; or all of them as the checkpoint left them
    mean, std = data.pixel_stats(ds.train_images)
    model = rt.prepare(build_model(args.arch, args.num_classes, ds.train_images.shape[1], mean, std, args.bn_momentum,
                                   args.pretrained, args.download))
    if init is not None:  # a resumed run continues its own weights instead
        say(checkpoint.init_weights(model, init, args.init))
    ema = semisup.make_ema(model, args.ema_decay)
    eval_model = model if ema is None else ema.module
    net = rt.compile(rt.ddp(model))
    optimizer = make_optimizer(model, args, dev)
    policy = POLICIES[args.policy](args, args.num_classes, len(x_unl)).to(dev)
    if rt.world > 1:
        seed_everything(args.seed * 1000 + rt.rank)
    streams = {'labeled': data.IndexStream(len(x_lab), args.batch_size, dev),
               'unlabeled': data.IndexStream(len(x_unl), args.unlabeled_batch_size, dev)}
    train_acc = semisup.TrainAccuracy(dev, args.acc_seed)
    progress, flag_changes = checkpoint.Progress(), []
    if run.ckpt is not None:
        progress, note = checkpoint.restore_training(run, rt, args, model, ema, optimizer, policy, train_acc, streams)
        flag_changes = checkpoint.flag_changes(run.ckpt, args, progress.step)
        say((note + '\n' if note else '') + f'resumed {run.resume} at step {progress.step}'
            + checkpoint.describe_changes(flag_changes[-1:], progress.step))

    # ---- the run directory is written from here on (by the first process only)
    if rt.is_main:
        os.makedirs(run.out, exist_ok=True)
        if run.ckpt is None:
            with open(os.path.join(run.out, 'split.json'), 'w') as f:
                json.dump({k: v.tolist() for k, v in split.items()} | {'split_seed': args.split_seed}, f)
    log = metrics.RunLog(run.out, progress.step, args.steps, enabled=rt.is_main)
    meta = {'git_sha': metrics.git_sha(), 'torch': str(torch.__version__), 'device': rt.describe(), 'amp': rt.precision}
    if flag_changes:  # every flag changed on a resume, from which step: in each later log record and checkpoint
        meta['flag_changes'] = flag_changes

    # ---- training loop: metrics stay on the device until a print or an evaluation
    eval_sets = {k: sets[k] for k in ('val', 'test')}
    meter = metrics.Meter(rt)
    no_bad_step = args.steps + 1
    first_nonfinite = torch.full((), no_bad_step, dtype=torch.long, device=dev)
    stop = StopRequest()
    step_fn = functools.partial(train_step, net, ema, optimizer, rt, policy, train_acc)
    model.train()
    while progress.step < args.steps:
        step = progress.step
        if step > 0 and step % args.acc_window == 0:
            train_acc.new_window()
        rt.step_begin()
        for group in optimizer.param_groups:
            group['lr'] = semisup.lr_at(step, args)
        i_l, i_u = streams['labeled'].next(), streams['unlabeled'].next()
        ctx = Context(step, args.steps, train_acc.fraction(), None, rt, None, None, train_acc.completed())
        m = step_fn(x_lab[i_l], y_lab[i_l], x_unl[i_u], i_u, y_unl[i_u], ctx, args)
        first_nonfinite = torch.where(torch.isfinite(m['loss']), first_nonfinite, first_nonfinite.clamp(max=step + 1))
        meter.add(**m)
        progress.step = step = step + 1
        log.tick()
        at_eval = step % args.eval_every == 0 or step == args.steps
        stopping = stop.requested and rt.world == 1
        if step % args.print_every == 0 or at_eval or stopping:
            bad = int(rt.all_reduce(first_nonfinite.clone(), 'min'))
            if bad != no_bad_step:
                say(f'error: non-finite loss at step {bad}; stopping. The last checkpoint in {run.out} is from before '
                    f'it (try a lower --lr or --lambda-u, or --amp off)', file=sys.stderr)
                sys.exit(1)
            if rt.world > 1:
                stopping = bool(rt.all_reduce(torch.tensor(int(stop.requested), device=dev), 'max'))
            w = meter.peek()
            log.progress(step, f'loss_x {w["loss_x"]:.3f}  loss_u {w["loss_u"]:.4f}  mask {w["mask_ratio"]:.2f}  '
                               f'train_acc {w["train_acc"]:.1f}  {w["ms_per_step"]:.0f} ms/step')
        if at_eval:
            w = meter.read() | {'lr': optimizer.param_groups[0]['lr']}
            if rt.is_main:
                wants_test = (lambda v: args.test_when == 'every-eval' or step == args.steps
                              or progress.improves(v))
                record, val = metrics.evaluate_and_log(eval_model, eval_sets, w, policy.lambda_u(step - 1), step, log,
                                                       meta, args.eval_batch_size, wants_test)
                if progress.add(record):
                    checkpoint.save_best(run, eval_model, progress, args, METHOD, ds.classes, meta)
                progress.val_acc = val or progress.val_acc
            progress.val_acc = rt.broadcast_object(progress.val_acc)
        if at_eval or stopping:
            checkpoint.save_training(run, rt, progress, args, METHOD, ds.classes, meta, model, ema, optimizer, policy,
                                     train_acc, streams)
            meter.restart_clock()
        if stopping and step < args.steps:
            log.close()
            say(f'stopped by SIGTERM after step {step}; checkpoint saved in {run.out}; continue with --resume auto')
            return
    log.close()

    metrics.print_summary(rt, model, progress, run.out, args.test_when == 'every-eval')


def main(args):
    rt = Runtime(args.device, args.amp, args.compile)
    try:
        if args.evaluate:
            metrics.evaluate_checkpoint(args, rt)
        else:
            train(args, rt)
    finally:
        rt.close()


if __name__ == '__main__':
    try:
        main(get_args())
    except UserError as e:
        fail(str(e))
