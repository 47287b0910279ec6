"""The run every method shares: data on the device, the model and its training state, MixMatch's guess and
step, the loop with its evaluations and checkpoints, resume, and --evaluate. Shared module (identical copies
in every method folder, tests/test_copies.py).

A method is a Step: a class whose call makes one update (it draws its own batches from the run's samplers)
and whose hooks say what else it needs (its data, model, evaluation). MixMatchStep is the paper's; the
variants the flags ask for (--labeled-only, --drop-unkept, --rot-weight) and etc/'s other systems are its
subclasses or siblings. In a script, a test or a benchmark:

    state = make_state(args, rt, model, sets, POLICIES)   # EMA, optimizer, policy, samplers, train accuracy
    step = MixMatchStep.for_args(args)(state)             # the step these flags ask for
    metrics = step(0)                                     # one update; its metrics as device tensors
    main(get_args, METHOD, POLICIES, run_tag)             # a whole script: parse, train or --evaluate
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import augment
import checkpoint
import data
import metrics
import semisup
from errors import UserError, fail
from models import build_model, without_heads
from policy import Context, Guess, MixedRows
from runtime import Runtime, StopRequest, seed_everything


# =========================================================================================================
# The training state
# =========================================================================================================
@dataclass
class State:
    """What a run trains and carries from step to step; checkpoint.pt holds all of it."""
    args: argparse.Namespace  # every flag of the run
    rt: Runtime               # device, precision, processes
    model: torch.nn.Module    # the weights the optimizer updates
    ema: object               # semisup.EMA of them, or None (--ema-decay 0)
    net: torch.nn.Module      # runs the training forwards: the model, under DDP and torch.compile where enabled
    optimizer: torch.optim.Optimizer
    policy: torch.nn.Module   # the pseudo-label policy (its buffers are state)
    train_acc: semisup.TrainAccuracy
    streams: dict             # name -> data.IndexStream, the samplers
    sets: dict                # name -> (uint8 images, labels) on the device
    method: str = ''          # the script's name, and the classes: written into every checkpoint
    classes: tuple = ()
    meta: dict = field(default_factory=dict)  # code and machine, written into every log record and checkpoint
    progress: checkpoint.Progress = field(default_factory=checkpoint.Progress)
    val_acc: tuple = None     # progress.val_acc as device tensors, what ctx.val_acc reads

    def __post_init__(self):
        self.refresh_val_acc()

    @property
    def eval_model(self):
        """The weights that are evaluated and released: the EMA's, or the model's without one."""
        return self.model if self.ema is None else self.ema.module

    def refresh_val_acc(self):
        self.val_acc = tuple(torch.tensor(v, device=self.rt.device) for v in self.progress.val_acc)


def make_optimizer(model, args, device):
    fused = {'fused': True} if device.type in ('cuda', 'cpu') else {}
    if args.optimizer == 'adam':
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, **fused)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd,
                           nesterov=args.nesterov, **fused)


def make_state(args, rt, model, sets, policies, streams=None, **info):
    """The training state around a prepared model, in the order the scripts make it (the random draws of a seed
    depend on it): EMA, the training forward, optimizer, policy (args.policy of `policies`), samplers
    ({name: batch-size flag} over sets, default: labeled and unlabeled), train accuracy."""
    dev = rt.device
    ema = semisup.make_ema(model, args.ema_decay)
    net = rt.compile(rt.ddp(model))  # shares its parameters with `model`
    optimizer = make_optimizer(model, args, dev)
    policy = policies[args.policy](args, args.num_classes, len(sets['unlabeled'][0])).to(dev)
    if rt.world > 1:  # each process draws its own batches and augmentations
        seed_everything(args.seed * 1000 + rt.rank)
    streams = streams or MixMatchStep.STREAMS
    samplers = {name: data.IndexStream(len(sets[name][0]), getattr(args, size), dev) for name, size in streams.items()}
    return State(args, rt, model, ema, net, optimizer, policy, semisup.TrainAccuracy(dev, args.acc_seed), samplers,
                 sets, **info)


# =========================================================================================================
# A step, and MixMatch's
# =========================================================================================================
class Step:
    """One update of a method: __call__(step) draws its batches from the state's samplers, trains, and returns
    the step's metrics as device tensors (no host synchronization). The class's hooks tell the run what the
    method needs; the defaults are MixMatch's."""
    STREAMS = {'labeled': 'batch_size', 'unlabeled': 'unlabeled_batch_size'}  # sampler -> its batch-size flag
    NONFINITE_HINT = 'try a lower --lr or --lambda-u, or --amp off'
    SUMMARY_NOTE = None  # printed after the run's summary

    def __init__(self, s):
        self.s = s

    # ---- what the run prepares for the step
    @staticmethod
    def classes(ds):
        """The names of the classifier's outputs."""
        return ds.classes

    @staticmethod
    def check_data(ds, split):
        if len(split['unlabeled']) == 0:
            raise UserError('no unlabeled images left: lower --n-labeled / --n-val or add unlabeled images')

    @staticmethod
    def add_sets(sets):
        """Sets the step draws from besides labeled, unlabeled, val and test (name -> (images, labels))."""

    @staticmethod
    def every_training_image(sets):
        """An add_sets for the steps that learn from every training image, its label unused: the set 'train'."""
        sets['train'] = (torch.cat([sets['labeled'][0], sets['unlabeled'][0]]), None)

    @staticmethod
    def describe_data(args, ds, sets):
        return (f'data {args.dataset}: ' + ', '.join(f'{0 if x is None else len(x)} {k}' for k, (x, _) in sets.items())
                + f', {args.num_classes} classes, {tuple(ds.train_images.shape[1:])} images, augment '
                + args.augment_kind + ''.join(f' + {name} {value}' for name, value in (
                    ('randaugment', args.randaugment), ('augmix', args.augmix), ('cutout', args.cutout)) if value))

    @staticmethod
    def heads(args):
        """The heads trained besides the classifier ({name: feature dim -> module}), or None."""
        return None

    @classmethod
    def build_model(cls, args, ds, mean, std):
        return build_model(args.arch, args.num_classes, ds.train_images.shape[1], mean, std, args.bn_momentum,
                           args.pretrained, args.download, cls.heads(args))

    @staticmethod
    def eval_sets(sets):
        """What each evaluation measures, val first: {name: (images, labels)}."""
        return {k: sets[k] for k in ('val', 'test')}

    # ---- what the loop asks the step
    def lambda_u(self, step):
        """The unlabeled weight after `step` steps, logged at evaluations."""
        return self.s.policy.lambda_u(step)

    def progress_line(self, w):
        mask = f'mask {w["mask_ratio"]:.2f}  ' if 'mask_ratio' in w else 'labeled only  '
        return (f'loss_x {w["loss_x"]:.3f}  loss_u {w["loss_u"]:.4f}  {mask}train_acc {w["train_acc"]:.1f}  '
                f'{w["ms_per_step"]:.0f} ms/step')

    def evaluate(self, w, step, log, wants_test, eval_sets):
        """One evaluation of the EMA weights, logged; returns (record, the val (correct, count) or None)."""
        s = self.s
        return metrics.evaluate_and_log(s.eval_model, eval_sets, w, self.lambda_u(step - 1), step, log, s.meta,
                                        s.args.eval_batch_size, wants_test)

    # ---- helpers for the steps
    def next_batches(self, step):
        """The labeled and the unlabeled sampler's next batches, and the Context of a step that guesses no label
        (no draw, forward or val accuracy): (x_l, y_l, x_u, i_u, y_u, ctx)."""
        s = self.s
        (x_lab, y_lab), (x_unl, y_unl) = s.sets['labeled'], s.sets['unlabeled']
        i_l, i_u = s.streams['labeled'].next(), s.streams['unlabeled'].next()
        ctx = Context(step, s.args.steps, s.train_acc.fraction(), None, s.rt, None, None, s.train_acc.completed())
        return x_lab[i_l], y_lab[i_l], x_unl[i_u], i_u, y_unl[i_u], ctx

    def update(self, loss):
        """Backward, optimizer step, EMA."""
        s = self.s
        s.rt.backward_and_step(loss, s.optimizer)
        if s.ema is not None:
            s.ema.update_parameters(s.net)

    def count(self, logits, labels):
        """Add a batch's top-1 to the train accuracy (summed over processes); the accuracy in force, in %."""
        s = self.s
        correct = (logits.argmax(dim=1) == labels).sum()
        s.train_acc.add(*s.rt.all_reduce(torch.stack([correct, torch.full_like(correct, len(labels))])))
        num, den = s.train_acc.fraction()
        return 100.0 * num / den


def augment_views(images, args):
    """Crop and flip (flags.DEFAULTS['augment']), then what --strong-augment adds; every image its own draw."""
    return augment.augment(images, args.augment_kind, args.randaugment, args.augmix, args.cutout)


def guess_labels(net, rt, images, index, hidden, args):
    """MixMatch's label guess: K augmentations of every image, the mean softmax over them, sharpened with T. With
    --strong-augment ...+weak-guess, the guess comes from K other views of crop and flip alone (the original's Adaptive_RA,
    main.py:531-532), and the augmented views train."""
    views = torch.cat([augment_views(images, args) for _ in range(args.K)])
    views = views.contiguous(memory_format=rt.memory_format)
    guessed = views if args.guess_views == 'augmented' else torch.cat(
        [augment.augment(images, args.augment_kind) for _ in range(args.K)]).contiguous(memory_format=rt.memory_format)
    with torch.no_grad(), rt.autocast():
        mean_prob = torch.softmax(net(guessed).float(), dim=1).view(args.K, len(images), -1).mean(dim=0)
    return Guess(images, index, hidden, views, mean_prob, semisup.sharpen(mean_prob, args.T))


def forward(net, rt, images):
    """The training model's fp32 logits, with gradient (a policy's ctx.forward())."""
    with rt.autocast():
        return net(images.contiguous(memory_format=rt.memory_format)).float()


class MixMatchStep(Step):
    """One MixMatch step under a pseudo-label policy: guess the unlabeled batch, let the policy select the
    guessed images that train, mix up, one forward, loss, update; then the train accuracy."""

    def __init__(self, s):
        super().__init__(s)
        self.extra = {}  # loss terms a variant adds: name -> (weight, loss)

    @classmethod
    def for_args(cls, args):
        """The step these flags ask for: --labeled-only, --drop-unkept and --rot-weight are variants of it."""
        if args.labeled_only:
            return LabeledOnly
        bases = tuple(c for c, on in ((WithRotation, args.rot_weight), (DropUnkept, args.drop_unkept)) if on)
        return type('MixMatchStep', bases, {}) if len(bases) > 1 else (bases or (cls,))[0]

    def draw(self):
        """The unlabeled sampler's next batch, guessed (a policy's ctx.draw())."""
        x_unl, y_unl = self.s.sets['unlabeled']
        i = self.s.streams['unlabeled'].next()
        return guess_labels(self.s.net, self.s.rt, x_unl[i], i, y_unl[i], self.s.args)

    def forward(self, images):
        """The training model's fp32 logits, with gradient (a policy's ctx.forward())."""
        return forward(self.s.net, self.s.rt, images)

    def context(self, step):
        s = self.s
        return Context(step, s.args.steps, s.train_acc.fraction(), s.val_acc, s.rt, self.draw, self.forward,
                       s.train_acc.completed())

    def __call__(self, step):
        x_lab, y_lab = self.s.sets['labeled']
        i_l = self.s.streams['labeled'].next()
        u = self.draw()
        return self.train(x_lab[i_l], y_lab[i_l], u, self.context(step))

    def train(self, x_l, y_l, u, ctx):
        """The step on a labeled batch and a guessed unlabeled one (u)."""
        s, a = self.s, self.s.args
        B = len(x_l)
        u, keep, threshold = s.policy.select(u, ctx)
        x, x_mix, t_mix, valid, image = self.mix(x_l, y_l, u.views, u.target, keep)
        logits = self.forward_mixed(x_mix, u)
        loss_x = semisup.soft_cross_entropy(logits[:B], t_mix[:B]).mean()
        term_u, loss_u = s.policy.loss(MixedRows(logits[B:], t_mix[B:], valid[B:], image[B:]), u, ctx)
        loss = loss_x + term_u
        for weight, extra in self.extra.values():
            loss = loss + weight * extra
        self.update(loss)

        # Train accuracy, the competence signal a policy may read. As the original: a forward of the labeled batch's
        # own (unmixed) augmentation after the step, with batch statistics (BatchNorm's running statistics are left
        # alone). With --accuracy mixed, or for a policy that does not read it: the mixed labeled rows the step
        # already has (each is >= 50% its own image), no extra forward.
        if a.train_acc == 'clean' and s.policy.reads_train_acc(a):
            with torch.no_grad(), s.rt.autocast(), semisup.batch_statistics_only(s.net):
                logits_l = s.net(x[:B].contiguous(memory_format=s.rt.memory_format)).float()
        else:
            logits_l = logits[:B]
        out = {'loss': loss.detach(), 'loss_x': loss_x.detach(), 'loss_u': loss_u.detach(),
               'train_acc': self.count(logits_l, y_l)}
        out |= {name: extra.detach() for name, (_, extra) in self.extra.items()}
        known = keep & (u.hidden >= 0)
        out |= {'pl_correct': ((u.target.argmax(dim=1) == u.hidden) & known).sum(), 'pl_count': known.sum(),
                'mask_ratio': keep.float().mean(), 'threshold': threshold, 'confidence': s.policy.confidence(u).mean()}
        return out | {f'policy_{k}': v for k, v in s.policy.log_values().items()}

    def mix(self, x_l, y_l, views, target, keep):
        """MixUp (or CutMix) over [labeled, unlabeled x K]; unkept unlabeled rows only mix among themselves and
        take no loss. Returns the unmixed rows, the mixed ones, their targets, which rows count, and each row's
        own unlabeled image (-1: labeled)."""
        a, dev, B = self.s.args, x_l.device, len(x_l)
        x = torch.cat([augment_views(x_l, a), views])
        targets = torch.cat([F.one_hot(y_l, a.num_classes).float(), target.repeat(a.K, 1)])
        valid = torch.cat([torch.ones(B, dtype=torch.bool, device=dev), keep.repeat(a.K)])
        image = torch.cat([torch.full((B,), -1, device=dev), torch.arange(len(keep), device=dev).repeat(a.K)])
        x, targets, valid, image = self.rows(x, targets, valid, image)
        lam = semisup.sample_mixup_lambda(a.alpha, dev)
        partner = semisup.mixup_partner(valid)
        x_mix, t_mix = semisup.mix_rows(x, targets, partner, lam, a.mix)
        return x, x_mix.contiguous(memory_format=self.s.rt.memory_format), t_mix, valid, image

    def rows(self, x, targets, valid, image):
        """The rows that go into mixup: all of them (the batch keeps its shape)."""
        return x, targets, valid, image

    def forward_mixed(self, x_mix, u):
        with self.s.rt.autocast():
            return self.s.net(x_mix).float()


class LabeledOnly(MixMatchStep):
    """--labeled-only, the tables' baseline: MixMatch's step on the labeled batch alone; no unlabeled image is
    guessed, mixed or trained on (the unlabeled sampler still draws, so that earlier runs of it reproduce)."""

    def __call__(self, step):
        x_lab, y_lab = self.s.sets['labeled']
        i_l = self.s.streams['labeled'].next()
        self.s.streams['unlabeled'].next()
        return self.train(x_lab[i_l], y_lab[i_l])

    def train(self, x_l, y_l, u=None, ctx=None):
        B, C, dev = len(x_l), self.s.args.num_classes, x_l.device
        nothing = torch.zeros(0, C, device=dev)
        _, x_mix, t_mix, _, _ = self.mix(x_l, y_l, x_l[:0].float(), nothing, torch.zeros(0, dtype=torch.bool, device=dev))
        logits = self.forward_mixed(x_mix, None)
        loss_x = semisup.soft_cross_entropy(logits[:B], t_mix[:B]).mean()
        zero = torch.zeros((), device=dev)
        loss = loss_x + zero
        self.update(loss)
        return {'loss': loss.detach(), 'loss_x': loss_x.detach(), 'loss_u': zero, 'train_acc': self.count(logits[:B], y_l)}

    def lambda_u(self, step):
        return 0.0


class DropUnkept(MixMatchStep):
    """--drop-unkept, the original's formulation: the unkept images leave the batch before mixup (its shape
    varies; one host synchronization per step)."""

    def rows(self, x, targets, valid, image):
        rows = valid.nonzero().squeeze(1)
        return x[rows], targets[rows], valid[rows], image[rows]


class WithRotation(MixMatchStep):
    """--rot-weight (sessions 191, 192): RotNet's loss beside MixMatch's. Each unlabeled image's first view,
    turned 0-3 quarters, goes through the same forward into a 4-way rotation head (logged as loss_rot)."""

    @staticmethod
    def heads(args):
        return {'rotation': lambda features: torch.nn.Linear(features, 4)}

    def forward_mixed(self, x_mix, u):
        s = self.s
        turns = torch.randint(4, (len(u.images),), device=x_mix.device)
        x_rot = augment.rotate90(u.views[:len(u.images)], turns)
        with s.rt.autocast():
            logits, (rot_logits,) = s.net(torch.cat([x_mix, x_rot]).contiguous(memory_format=s.rt.memory_format),
                                          heads=('rotation',))
        self.extra = {'loss_rot': (s.args.rot_weight, F.cross_entropy(rot_logits[len(x_mix):].float(), turns))}
        return logits[:len(x_mix)].float()


# =========================================================================================================
# The run
# =========================================================================================================
def train(args, rt, method, policies, tag, step_class):
    """A whole run: the run directory (or the checkpoint it resumes), data, state, the loop, evaluations and
    checkpoints; SIGTERM saves a checkpoint and stops."""
    say = print if rt.is_main else (lambda *a, **k: None)
    run = checkpoint.open_run(args, method, tag, rt)  # decided before anything is written
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
    classes = step_class.classes(ds)
    args.num_classes = len(classes)
    if run.ckpt is not None and run.ckpt['num_classes'] != args.num_classes:
        raise UserError(f'--resume {run.resume}: checkpoint has {run.ckpt["num_classes"]} classes, the data '
                        f'{args.num_classes}')
    step_class.check_data(ds, split)
    sets = data.on_device(ds, split, rt.device)  # name -> (images, labels); test: (None, None) without a test set
    step_class.add_sets(sets)
    args.augment_kind = augment.choose(args.augment, ds.train_images.shape[-1])
    say(step_class.describe_data(args, ds, sets), flush=True)
    for line in data.notes(ds, split):
        say(line, flush=True)

    # ---- model and training state; or all of it as the checkpoint left it
    mean, std = data.pixel_stats(ds.train_images)
    model = rt.prepare(step_class.build_model(args, ds, mean, std))
    if init is not None:  # a resumed run continues its own weights instead
        say(checkpoint.init_weights(model, init, args.init))
    meta = {'git_sha': metrics.git_sha(), 'torch': str(torch.__version__), 'device': rt.describe(), 'amp': rt.precision}
    s = make_state(args, rt, model, sets, policies, step_class.STREAMS, method=method, classes=tuple(classes),
                   meta=meta)
    if run.ckpt is not None:
        note = checkpoint.restore_training(s, run.ckpt, run.resume)
        flag_changes = checkpoint.flag_changes(run.ckpt, args, s.progress.step)
        if flag_changes:  # every flag changed on a resume, from which step: in each later log record and checkpoint
            meta['flag_changes'] = flag_changes
        say((note + '\n' if note else '') + f'resumed {run.resume} at step {s.progress.step}'
            + checkpoint.describe_changes(flag_changes[-1:], s.progress.step))

    # ---- the run directory is written from here on (by the first process only)
    if rt.is_main:
        os.makedirs(run.out, exist_ok=True)
        if run.ckpt is None:
            with open(os.path.join(run.out, 'split.json'), 'w') as f:
                json.dump({k: v.tolist() for k, v in split.items()} | {'split_seed': args.split_seed}, f)
        checkpoint.write_args(run.out, args)
    log = metrics.RunLog(run.out, s.progress.step, args.steps, enabled=rt.is_main)
    if run_steps(s, step_class(s), run, log):
        metrics.print_summary(rt, model, s.progress, run.out, args.test_when == 'every-eval')
        if step_class.SUMMARY_NOTE:
            say(step_class.SUMMARY_NOTE)


def run_steps(s, step_fn, run, log):
    """Train until --steps; metrics stay on the device until a print or an evaluation. False if stopped early."""
    args, rt, progress = s.args, s.rt, s.progress
    say = print if rt.is_main else (lambda *a, **k: None)
    eval_sets = step_fn.eval_sets(s.sets)
    meter = metrics.Meter(rt)
    no_bad_step = args.steps + 1
    first_nonfinite = torch.full((), no_bad_step, dtype=torch.long, device=rt.device)
    stop = StopRequest()
    s.model.train()
    while progress.step < args.steps:
        step = progress.step
        if step > 0 and step % args.acc_window == 0:
            s.train_acc.new_window()
        rt.step_begin()
        if args.lr_schedule != 'constant':
            for group in s.optimizer.param_groups:
                group['lr'] = semisup.lr_at(step, args)
        m = step_fn(step)
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
                    f'it ({step_fn.NONFINITE_HINT})', file=sys.stderr)
                sys.exit(1)
            if rt.world > 1:
                stopping = bool(rt.all_reduce(torch.tensor(int(stop.requested), device=rt.device), 'max'))
            log.progress(step, step_fn.progress_line(meter.peek()))
        if at_eval:
            w = meter.read() | {'lr': s.optimizer.param_groups[0]['lr']}  # every process: the means are all-reduced
            if rt.is_main:
                wants_test = (lambda v: args.test_when == 'every-eval' or step == args.steps
                              or progress.improves(v))  # the tables' test top-1 at best val, and the last one
                record, val = step_fn.evaluate(w, step, log, wants_test, eval_sets)
                if progress.add(record):
                    checkpoint.save_best(s, os.path.join(run.out, 'best.pt'))
                progress.val_acc = val or progress.val_acc
            progress.val_acc = rt.broadcast_object(progress.val_acc)
            s.refresh_val_acc()
        if at_eval or stopping:
            checkpoint.save_training(s, run.checkpoint_path)
            meter.restart_clock()
        if stopping and step < args.steps:
            log.close()
            say(f'stopped by SIGTERM after step {step}; checkpoint saved in {run.out}; continue with --resume auto')
            return False
    log.close()
    return True


def evaluate(args, rt):
    """--evaluate PATH: rebuild the data and the model from the checkpoint's args, print fp32 test top-1/top-5
    (validation on the NSML layout, which has no labeled test set)."""
    ckpt = checkpoint.load_checkpoint(args.evaluate)
    a = argparse.Namespace(**ckpt['args'])
    a.data_root = args.data_root or a.data_root
    a.download, a.cache_dir, a.eval_batch_size = args.download, args.cache_dir, args.eval_batch_size
    a.num_classes = None  # the data says how many classes it has; compared with the checkpoint's below
    ds, split = data.load_data(a)
    if len(ds.classes) != ckpt['num_classes']:
        raise UserError(f'{args.evaluate}: trained on {ckpt["num_classes"]} classes, the data has {len(ds.classes)}')
    channels = ds.train_images.shape[1]  # the normalization statistics come from the checkpoint
    model = rt.prepare(build_model(a.arch, ckpt['num_classes'], channels, (0.5,) * channels, (0.5,) * channels,
                                   a.bn_momentum))
    checkpoint.load_weights(model, without_heads(ckpt['ema']), args.evaluate)  # pretext heads play no part
    if ds.test_images is not None:
        r, name = metrics.evaluate(model, ds.test_images, ds.test_labels, a.eval_batch_size), 'test'
    else:
        val = torch.from_numpy(split['val'])
        r, name = metrics.evaluate(model, ds.train_images[val], ds.train_labels[val], a.eval_batch_size), 'val'
    if rt.is_main:
        print(f'{name} top-1 {r["top1"]:.2f} top-5 {r["top5"]:.2f}')


def main(get_args, method, policies, run_tag, step_class=None):
    """A script: parse the flags, then train (or --evaluate a checkpoint). An error the user caused ends as one
    line on stderr and exit code 2."""
    try:
        args = get_args()
        rt = Runtime(args.device, args.amp, args.compile)
        try:
            if getattr(args, 'evaluate', None):
                evaluate(args, rt)
            else:
                train(args, rt, method, policies, run_tag(args), step_class or MixMatchStep.for_args(args))
        finally:
            rt.close()
    except UserError as e:
        fail(str(e))
