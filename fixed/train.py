"""Fixed-threshold MixMatch: MixMatch that trains only on the unlabeled images whose guessed label is confident
enough. An unlabeled image is kept iff its confidence (max of the mean prediction) is >= --threshold; unkept
images take no part in mixup or the unlabeled loss, whose weight is constant.

    python fixed/train.py --threshold 0.8                     # the paper's fixed 0.8, MSE (session 408)
    python fixed/train.py --evaluate runs/<run>/best.pt       # test top-1/top-5 of a checkpoint

The top of this file is the method: the family's flags and policy classes. The rest is the same in the three
scripts, so `diff mixmatch/train.py fixed/train.py` shows everything this family changes.
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

METHOD = 'fixed'


# =========================================================================================================
# The method: this family's flags and pseudo-label policies
# =========================================================================================================
def add_method_flags(parser):
    g = parser.add_argument_group('pseudo-label policy: fixed threshold')
    g.add_argument('--threshold', type=float, default=0.8,
                   help='keep an unlabeled image iff its confidence is >= this (paper: 0.8; the original code: 0.5)')
    g.add_argument('--confidence', default='unsharpened', choices=('unsharpened', 'sharpened'),
                   help='max of the mean prediction before (original code) or after sharpening (report, Algorithm 1)')
    g.add_argument('--threshold-end', type=float, default=0.5,
                   help='linear: where the threshold ends, from --threshold (the notes: 0.9 to 0.5)')
    g.add_argument('--schedule-steps', type=int, default=0,
                   help='linear: steps the fall takes (0: the whole run; the original: slow 80/300 of it, fast 5/300)')
    g.add_argument('--lambda-pi', type=float, default=10,
                   help='consistency: weight of the Pi-model loss on the images below, times lambda_u (original: 10)')
    parser.set_defaults(loss='mse')
    return g


def check_method_args(args):
    if not 0 < args.threshold <= 1:
        raise UserError(f'--threshold {args.threshold} must be in (0, 1]')
    if args.policy == 'linear' and not 0 < args.threshold_end <= args.threshold:
        raise UserError(f'--threshold-end {args.threshold_end} must be in (0, --threshold {args.threshold}]')
    if args.schedule_steps < 0 or args.lambda_pi < 0:
        raise UserError('--schedule-steps and --lambda-pi must be >= 0')
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
    """Sessions 79, 348, 352, 387: the threshold falls linearly from --threshold to --threshold-end over
    --schedule-steps steps, then stays there. The original's rates (left commented in the 401 and 408 code,
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
      kept       the images at or above it train as MixMatch's, but with the unsharpened    (main.py:437-438)
                 mean prediction as their label, and a constant lambda_u                   (main.py:504)
      below      a Pi-model loss: the mean squared difference of the softmax on two views  (main.py:91-95, 447-453)
                 (with gradient), from epoch 10 on and where more than one image is below, weighted
                 --lambda-pi * lambda_u * min(1, e / 250)                                   (main.py:88, 502-503)
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
