"""Adaptive-threshold MixMatch (D. Kim, Y. Lee, KAIST 2020): MixMatch that trains only on the guessed labels
it trusts most. Each step keeps the floor(B_u * train_acc) most confident unlabeled images whose confidence
is also >= --min-th, where train_acc is the model's own running top-1 on its labeled batches: early on, when
the model is often wrong, few guesses are used; as it improves, more are. Unkept images take no part in
mixup or the unlabeled loss, which is a soft cross-entropy with weight 1.

    python adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce         # the paper's method (session 431)
    python adaptive/train.py --loss mse --lambda-u 75                     # table 1's MSE variant (session 401)
    python adaptive/train.py --evaluate runs/<run>/best.pt                # test top-1/top-5 of a checkpoint

The top of this file is the method: the family's flags and policy classes. The rest is the same in the three
scripts, so `diff mixmatch/train.py adaptive/train.py` shows everything this family changes.
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

METHOD = 'adaptive'


# =========================================================================================================
# The method: this family's flags and pseudo-label policies
# =========================================================================================================
def add_method_flags(parser):
    g = parser.add_argument_group('pseudo-label policy: adaptive threshold')
    g.add_argument('--min-th', type=float, default=0.5,
                   help='confidence floor: no image below it is kept, whatever the accuracy (paper: 0.5)')
    g.add_argument('--acc-source', default='train', choices=('train', 'val'),
                   help='the accuracy that sets k: train (running top-1 on labeled batches, the paper) or val')
    g.add_argument('--confidence', default='unsharpened', choices=('unsharpened', 'sharpened'),
                   help='max of the mean prediction before (original code) or after sharpening (report, Algorithm 1)')
    g.add_argument('--warm-threshold', type=float, default=0.9,
                   help='warm-start: the fixed threshold before the switch (the notes: 0.9 or 0.8)')
    g.add_argument('--warm-until', type=float, default=20,
                   help='warm-start: switch once the running train accuracy exceeds this many percent (original: 20)')
    g.add_argument('--extra-draws', type=int, default=5,
                   help='warm-start: most further unlabeled batches drawn per step to keep B_u images (original: 5)')
    g.add_argument('--flex-threshold', type=float, default=0.95,
                   help='flexmatch: tau, the threshold of a class that is learned well (FlexMatch: 0.95)')
    g.add_argument('--flex-warmup', default='on', choices=('on', 'off'),
                   help='flexmatch: count the images not yet above tau in the normalization (FlexMatch: on)')
    g.add_argument('--free-momentum', type=float, default=0.999,
                   help='freematch: momentum of the EMAs of confidence and class prediction (FreeMatch: 0.999)')
    parser.set_defaults(loss='ce')
    return g


def check_method_args(args):
    if not 0 <= args.min_th <= 1:
        raise UserError(f'--min-th {args.min_th} must be in [0, 1]')
    if args.acc_source == 'val' and args.n_val == 0:
        raise UserError('--acc-source val needs a validation set (--n-val > 0)')
    checks = [(0 < args.warm_threshold <= 1 and 0 <= args.warm_until <= 100, '--warm-threshold must be in (0, 1] '
               'and --warm-until in [0, 100]'), (args.extra_draws >= 0, '--extra-draws must be >= 0'),
              (0 < args.flex_threshold <= 1, '--flex-threshold must be in (0, 1]'),
              (0 <= args.free_momentum < 1, '--free-momentum must be in [0, 1)')]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def run_tag(args):
    """The flags of this family that name its default run directory."""
    return f'minth{args.min_th:g}-{args.acc_source}acc-{args.confidence}'


class Accuracy(Policy):
    """The paper's adaptive threshold: keep the k = floor(B_u * acc) most confident images (ties: lower index
    first) that also have confidence >= --min-th. acc is the running train top-1 (or the last val top-1), in
    exact integer arithmetic. Under torchrun the ranking runs over every process's images (B_u: the global
    batch). The threshold logged is the lowest kept confidence, or 1 when none is kept."""
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
    """Sessions 417 and 428: a fixed --warm-threshold while the last completed --acc-window's train accuracy is
    at most --warm-until % (so the first window is always warm, as the original's first epoch), the paper's
    rule (Accuracy) after it. Then "ensure the ratio": further unlabeled batches are drawn and guessed, up to
    --extra-draws, until every process has B_u images that pass the rule; the first B_u kept, in order, train.
    The first step past the warm phase is state (printed, and policy_switch_step in the log). Host syncs: one
    per step (the number of forward passes depends on it), one per further draw."""
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
    batch (q: the mean predictions, lambda: --free-momentum), both EMAs started at 1/C:
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
