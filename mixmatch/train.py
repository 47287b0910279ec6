"""MixMatch (Berthelot et al. 2019), the paper's baseline: every unlabeled image trains. K augmentations of each
unlabeled image are guessed (mean softmax, sharpened), labeled and unlabeled images are mixed up, and the model
trains with cross-entropy on the labeled rows and an MSE on the unlabeled rows, whose weight ramps up linearly
over --rampup-steps.

    python mixmatch/train.py                                  # MixMatch, MSE, lambda_u 75 (session 405)
    python mixmatch/train.py --labeled-only                   # the tables' baseline: the labeled images alone
    python mixmatch/train.py --evaluate runs/<run>/best.pt    # test top-1/top-5 of a checkpoint

The top of this file is the method: the family's flags and policy classes. The rest is the same in the three
scripts, so `diff mixmatch/train.py adaptive/train.py` shows what the thresholded methods change.
"""
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
from policy import Context, Guess, MixedRows, Policy
from runtime import Runtime, StopRequest, fail, seed_everything

METHOD = 'mixmatch'


# =========================================================================================================
# The method: this family's flags and pseudo-label policies
# =========================================================================================================
def add_method_flags(parser):
    g = parser.add_argument_group('pseudo-label policy: none (every unlabeled image trains)')
    g.add_argument('--mixed-threshold', type=float, default=0.9,
                   help='mixed-loss: the second term\'s rows are those whose own image reaches this (the notes: 0.9)')
    g.add_argument('--lambda-t', type=float, default=None,
                   help='mixed-loss: the second term\'s constant weight (default: --lambda-u, as the original)')
    parser.set_defaults(loss='mse', rampup_steps=16000)  # MixMatch's 16 "epochs" of 1024 steps
    return g


def check_method_args(args):
    if args.drop_unkept:
        raise UserError('--drop-unkept has no effect: MixMatch keeps every unlabeled image')
    if not 0 < args.mixed_threshold <= 1 or (args.lambda_t or 0) < 0:
        raise UserError('--mixed-threshold must be in (0, 1] and --lambda-t >= 0')


def run_tag(args):
    """The flags of this family that name its default run directory."""
    return f'rampup{args.rampup_steps}'


class KeepAll(Policy):
    """MixMatch: every guessed image trains, with the unlabeled weight ramped up over --rampup-steps."""


class MixedLoss(KeepAll):
    """Session 409: MixMatch's term over every image with its ramped weight, plus a second term of the same
    loss, with the constant weight --lambda-t, over the mixed rows whose own image's confidence reaches
    --mixed-threshold (logged as policy_loss_t)."""
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
# Everything below is the same in the three scripts: label guessing, the training step, the loop
# =========================================================================================================
def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES)


def guess_labels(net, rt, images, index, hidden, args):
    """MixMatch's label guess: K augmentations of every image, the mean softmax over them, sharpened with T. With
    --guess-views weak, the guess comes from K other views of crop and flip alone (the original's Adaptive_RA,
    main.py:531-532), and the augmented views train."""
    views = torch.cat([augment_views(images, args) for _ in range(args.K)])
    views = views.contiguous(memory_format=rt.memory_format)
    guessed = views if args.guess_views == 'augmented' else torch.cat(
        [augment.augment(images, args.augment_kind) for _ in range(args.K)]).contiguous(memory_format=rt.memory_format)
    with torch.no_grad(), rt.autocast():
        mean_prob = torch.softmax(net(guessed).float(), dim=1).view(args.K, len(images), -1).mean(dim=0)
    return Guess(images, index, hidden, views, mean_prob, semisup.sharpen(mean_prob, args.T))


def augment_views(images, args):
    """Crop and flip (--augment), then what --randaugment, --augmix and --cutout add; every image its own draw."""
    return augment.augment(images, args.augment_kind, args.randaugment, args.augmix, args.cutout)


def draw_and_guess(net, rt, sampler, x_unl, y_unl, args):
    """The sampler's next unlabeled batch, guessed (a policy's ctx.draw())."""
    i = sampler.next()
    return guess_labels(net, rt, x_unl[i], i, y_unl[i], args)


def forward(net, rt, images):
    """The training model's fp32 logits, with gradient (a policy's ctx.forward())."""
    with rt.autocast():
        return net(images.contiguous(memory_format=rt.memory_format)).float()


def train_step(net, ema, optimizer, rt, policy, train_acc, x_l, y_l, u, ctx, args):
    """One MixMatch step under a pseudo-label policy: select the guessed images that train, mix, one forward,
    loss, update. u: the guessed unlabeled batch (None with --labeled-only). Returns the step's metrics as
    device tensors (no host synchronization)."""
    B, C, K, dev = len(x_l), args.num_classes, args.K, x_l.device
    if u is None:  # --labeled-only, the tables' baseline: no unlabeled image is guessed, mixed or trained on
        views, target = x_l[:0].float(), torch.zeros(0, C, device=dev)
        keep = torch.zeros(0, dtype=torch.bool, device=dev)
    else:
        u, keep, threshold = policy.select(u, ctx)
        views, target = u.views, u.target

    # MixUp (or CutMix) over [labeled, unlabeled x K]; unkept unlabeled rows only mix among themselves, no loss.
    x = torch.cat([augment_views(x_l, args), views])
    targets = torch.cat([F.one_hot(y_l, C).float(), target.repeat(K, 1)])
    valid = torch.cat([torch.ones(B, dtype=torch.bool, device=dev), keep.repeat(K)])
    image = torch.cat([torch.full((B,), -1, device=dev), torch.arange(len(keep), device=dev).repeat(K)])
    if args.drop_unkept:  # the original's formulation: variable batch shape, one host sync
        rows = valid.nonzero().squeeze(1)
        x, targets, valid, image = x[rows], targets[rows], valid[rows], image[rows]
    lam = semisup.sample_mixup_lambda(args.alpha, dev)
    partner = semisup.mixup_partner(valid)
    x_mix, t_mix = semisup.mix_rows(x, targets, partner, lam, args.mix)
    x_mix = x_mix.contiguous(memory_format=rt.memory_format)

    if args.rot_weight:  # RotNet (191, 192): each image's first view, turned 0-3 quarters, in the same forward
        turns = torch.randint(4, (len(u.images),), device=dev)
        x_rot = augment.rotate90(u.views[:len(u.images)], turns)
        with rt.autocast():
            logits, (rot_logits,) = net(torch.cat([x_mix, x_rot]).contiguous(memory_format=rt.memory_format),
                                        heads=('rotation',))
        logits, loss_rot = logits[:len(x_mix)].float(), F.cross_entropy(rot_logits[len(x_mix):].float(), turns)
    else:
        with rt.autocast():
            logits = net(x_mix).float()
    loss_x = semisup.soft_cross_entropy(logits[:B], t_mix[:B]).mean()
    if u is None:
        term_u = loss_u = torch.zeros((), device=dev)
    else:
        term_u, loss_u = policy.loss(MixedRows(logits[B:], t_mix[B:], valid[B:], image[B:]), u, ctx)
    loss = loss_x + term_u
    if args.rot_weight:
        loss = loss + args.rot_weight * loss_rot
    rt.backward_and_step(loss, optimizer)
    if ema is not None:
        ema.update_parameters(net)

    # Train accuracy, the competence signal a policy may read. As the original: a forward of the labeled batch's
    # own (unmixed) augmentation after the step, with batch statistics (BatchNorm's running statistics are left
    # alone). With --train-acc mixed, or for a policy that does not read it: the mixed labeled rows the step
    # already has (each is >= 50% its own image), no extra forward.
    if u is not None and args.train_acc == 'clean' and policy.reads_train_acc(args):
        with torch.no_grad(), rt.autocast(), semisup.batch_statistics_only(net):
            logits_l = net(x[:B].contiguous(memory_format=rt.memory_format)).float()
    else:
        logits_l = logits[:B]
    correct = (logits_l.argmax(dim=1) == y_l).sum()
    train_acc.add(*rt.all_reduce(torch.stack([correct, torch.full_like(correct, B)])))
    num, den = train_acc.fraction()
    out = {'loss': loss.detach(), 'loss_x': loss_x.detach(), 'loss_u': loss_u.detach(), 'train_acc': 100.0 * num / den}
    if args.rot_weight:
        out['loss_rot'] = loss_rot.detach()
    if u is not None:
        known = keep & (u.hidden >= 0)
        out |= {'pl_correct': ((u.target.argmax(dim=1) == u.hidden) & known).sum(), 'pl_count': known.sum(),
                'mask_ratio': keep.float().mean(), 'threshold': threshold, 'confidence': policy.confidence(u).mean()}
        out |= {f'policy_{k}': v for k, v in policy.log_values().items()}
    return out


def pretext_heads(args):
    """The heads the step trains besides the classifier: RotNet's 4-way rotation head with --rot-weight."""
    return {'rotation': lambda features: torch.nn.Linear(features, 4)} if args.rot_weight else None


def make_optimizer(model, args, device):
    fused = {'fused': True} if device.type in ('cuda', 'cpu') else {}
    if args.optimizer == 'adam':
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, **fused)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd,
                           nesterov=args.nesterov, **fused)


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
    sets = data.on_device(ds, split, dev)  # name -> (images, labels); test: (None, None) without a test set
    (x_lab, y_lab), (x_unl, y_unl) = sets['labeled'], sets['unlabeled']
    args.augment_kind = augment.choose(args.augment, ds.train_images.shape[-1])
    say(f'data {args.dataset}: ' + ', '.join(f'{0 if x is None else len(x)} {k}' for k, (x, _) in sets.items())
        + f', {args.num_classes} classes, {tuple(ds.train_images.shape[1:])} images, augment {args.augment_kind}'
        + ''.join(f' + {name} {value}' for name, value in (('randaugment', args.randaugment),
                  ('augmix', args.augmix), ('cutout', args.cutout)) if value),
        flush=True)
    for line in data.notes(ds, split):
        say(line, flush=True)

    # ---- model, EMA, optimizer, policy, samplers; or all of them as the checkpoint left them
    mean, std = data.pixel_stats(ds.train_images)
    model = rt.prepare(build_model(args.arch, args.num_classes, ds.train_images.shape[1], mean, std, args.bn_momentum,
                                   args.pretrained, args.download, pretext_heads(args)))
    if init is not None:  # a resumed run continues its own weights instead
        say(checkpoint.init_weights(model, init, args.init))
    ema = semisup.make_ema(model, args.ema_decay)
    eval_model = model if ema is None else ema.module
    net = rt.compile(rt.ddp(model))  # runs the training forward passes; shares its parameters with `model`
    optimizer = make_optimizer(model, args, dev)
    policy = POLICIES[args.policy](args, args.num_classes, len(x_unl)).to(dev)
    if rt.world > 1:  # each process draws its own batches and augmentations
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
    draw = functools.partial(draw_and_guess, net, rt, streams['unlabeled'], x_unl, y_unl, args)
    run_model = functools.partial(forward, net, rt)
    val_acc = tuple(torch.tensor(v, device=dev) for v in progress.val_acc)
    meter = metrics.Meter(rt)
    no_bad_step = args.steps + 1
    first_nonfinite = torch.full((), no_bad_step, dtype=torch.long, device=dev)
    stop = StopRequest()
    model.train()
    while progress.step < args.steps:
        step = progress.step
        if step > 0 and step % args.acc_window == 0:
            train_acc.new_window()
        rt.step_begin()
        if args.lr_schedule != 'constant':
            for group in optimizer.param_groups:
                group['lr'] = semisup.lr_at(step, args)
        i_l = streams['labeled'].next()
        if args.labeled_only:
            streams['unlabeled'].next()  # drawn all the same, so that earlier runs of the baseline reproduce
            u = None
        else:
            u = draw()
        ctx = Context(step, args.steps, train_acc.fraction(), val_acc, rt, draw, run_model, train_acc.completed())
        m = train_step(net, ema, optimizer, rt, policy, train_acc, x_lab[i_l], y_lab[i_l], u, ctx, args)
        first_nonfinite = torch.where(torch.isfinite(m['loss']), first_nonfinite, first_nonfinite.clamp(max=step + 1))
        meter.add(**m)
        progress.step = step = step + 1
        log.tick()
        at_eval = step % args.eval_every == 0 or step == args.steps
        stopping = stop.requested and rt.world == 1  # several processes agree at print steps instead
        if step % args.print_every == 0 or at_eval or stopping:
            bad = int(rt.all_reduce(first_nonfinite.clone(), 'min'))
            if bad != no_bad_step:
                say(f'error: non-finite loss at step {bad}; stopping. The last checkpoint in {run.out} is from before '
                    f'it (try a lower --lr or --lambda-u, or --amp off)', file=sys.stderr)
                sys.exit(1)
            if rt.world > 1:
                stopping = bool(rt.all_reduce(torch.tensor(int(stop.requested), device=dev), 'max'))
            w = meter.peek()
            mask = f'mask {w["mask_ratio"]:.2f}  ' if 'mask_ratio' in w else 'labeled only  '
            log.progress(step, f'loss_x {w["loss_x"]:.3f}  loss_u {w["loss_u"]:.4f}  {mask}'
                               f'train_acc {w["train_acc"]:.1f}  {w["ms_per_step"]:.0f} ms/step')
        if at_eval:
            w = meter.read() | {'lr': optimizer.param_groups[0]['lr']}  # every process: the means are all-reduced
            if rt.is_main:
                lambda_u = 0.0 if args.labeled_only else policy.lambda_u(step - 1)
                wants_test = (lambda v: args.test_when == 'every-eval' or step == args.steps
                              or progress.improves(v))  # the tables' test top-1 at best val, and the last one
                record, val = metrics.evaluate_and_log(eval_model, eval_sets, w, lambda_u, step, log, meta,
                                                       args.eval_batch_size, wants_test)
                if progress.add(record):
                    checkpoint.save_best(run, eval_model, progress, args, METHOD, ds.classes, meta)
                progress.val_acc = val or progress.val_acc
            progress.val_acc = rt.broadcast_object(progress.val_acc)
            val_acc = tuple(torch.tensor(v, device=dev) for v in progress.val_acc)
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
