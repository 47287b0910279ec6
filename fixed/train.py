"""Fixed-threshold MixMatch: MixMatch that trains only on the unlabeled images whose guessed label is confident
enough. An unlabeled image is kept iff its confidence (max of the mean prediction) is >= --threshold; unkept
images take no part in mixup or the unlabeled loss, whose weight is constant.

    python fixed/train.py --threshold 0.8                     # the paper's fixed 0.8, MSE (session 408)
    python fixed/train.py --evaluate runs/<run>/best.pt       # test top-1/top-5 of a checkpoint

`diff mixmatch/train.py fixed/train.py` shows everything this method changes: the pseudo-label policy,
its flags, and the unlabeled-loss schedule.
"""
import argparse
import hashlib
import json
import os
import signal
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from anywhere: the folder is self-contained

import torch
import torch.nn.functional as F

import augment
import common
from models import UserError, build_model

METHOD = 'fixed'


# =========================================================================================================
# Flags
# =========================================================================================================
def get_args(argv=None):
    parser = common.OneLineParser(description=__doc__, parents=[common.get_args_parser()],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group('pseudo-label policy: fixed threshold')
    g.add_argument('--threshold', type=float, default=0.8,
                   help='keep an unlabeled image iff its confidence is >= this, in (0, 1] (paper: 0.8; the '
                        'original code\'s default was 0.5)')
    g.add_argument('--confidence', default='unsharpened', choices=('unsharpened', 'sharpened'),
                   help='confidence = max of the mean prediction before or after sharpening (original code: '
                        'unsharpened; the report\'s Algorithm 1: sharpened)')
    parser.set_defaults(loss='mse')
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        raise UserError(f'--threshold {args.threshold} must be in (0, 1]')
    return common.finish_args(args, METHOD)


def run_tag(args):
    """The flags of this method that name its default run directory."""
    return f'th{args.threshold:g}-{args.confidence}'


# =========================================================================================================
# Pseudo-label policy: which unlabeled images train, and with what weight
# =========================================================================================================
def pseudo_label_mask(mean_prob, sharpened, train_acc, val_acc, rt, args):
    """Keep the images whose confidence is >= --threshold.
    Returns (keep: bool B_u, threshold in force, confidence: B_u)."""
    confidence = (mean_prob if args.confidence == 'unsharpened' else sharpened).max(dim=1).values
    return confidence >= args.threshold, torch.full_like(confidence[0], args.threshold), confidence


def lambda_u_at(step, args):
    """Unlabeled loss weight at `step` (steps completed): constant, no ramp-up (as the original)."""
    return args.lambda_u


# =========================================================================================================
# One training step (identical in the three scripts)
# =========================================================================================================
def train_step(model, ema, optimizer, rt, batch, train_acc, val_acc, step, args):
    x_l, y_l, x_u, y_u_hidden = batch
    B, Bu, C, K = len(x_l), len(x_u), args.num_classes, args.K
    cl = rt.memory_format

    if args.labeled_only:  # the tables' baseline: no unlabeled image is guessed, mixed or trained on
        x_u, y_u_hidden = x_u[:0], y_u_hidden[:0]
        u_aug, guess = x_u, torch.zeros(0, C, device=x_u.device)
        keep, threshold, confidence = torch.zeros(0, dtype=torch.bool, device=x_u.device), None, None
    else:  # label guessing: K augmentations of every unlabeled image, mean softmax, sharpened
        u_aug = torch.cat([augment.augment(x_u, args.augment_kind) for _ in range(K)]).contiguous(memory_format=cl)
        with torch.no_grad(), rt.autocast():
            mean_prob = torch.softmax(model(u_aug).float(), dim=1).view(K, Bu, C).mean(dim=0)
        guess = common.sharpen(mean_prob, args.T)
        keep, threshold, confidence = pseudo_label_mask(mean_prob, guess, train_acc, val_acc, rt, args)

    # MixUp over [labeled, unlabeled x K]; unkept unlabeled rows only mix among themselves and get no loss.
    x = torch.cat([augment.augment(x_l, args.augment_kind), u_aug])
    targets = torch.cat([F.one_hot(y_l, C).float(), guess.repeat(K, 1)])
    valid = torch.cat([torch.ones(B, dtype=torch.bool, device=x.device), keep.repeat(K)])
    if args.drop_unkept:  # the original's formulation: variable batch shape, one host sync
        rows = valid.nonzero().squeeze(1)
        x, targets, valid = x[rows], targets[rows], valid[rows]
    lam = common.sample_mixup_lambda(args.alpha, x.device)
    partner = common.mixup_partner(valid)
    x_mix = (lam * x + (1 - lam) * x[partner]).contiguous(memory_format=cl)
    t_mix = lam * targets + (1 - lam) * targets[partner]

    with rt.autocast():
        logits = model(x_mix).float()
    loss_x = common.soft_cross_entropy(logits[:B], t_mix[:B]).mean()
    loss_u = common.unlabeled_loss(logits[B:], t_mix[B:], valid[B:], args.loss)
    loss = loss_x + lambda_u_at(step, args) * loss_u

    optimizer.zero_grad(set_to_none=True)
    if rt.scaler is not None:
        rt.scaler.scale(loss).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if ema is not None:
        ema.update_parameters(model)

    # Train accuracy from logits the step already has: each mixed labeled row is >= 50% its own image.
    correct = (logits[:B].argmax(dim=1) == y_l).sum()
    train_acc.add(*rt.all_reduce(torch.stack([correct, torch.full_like(correct, B)])))
    known = keep & (y_u_hidden >= 0)
    num, den = train_acc.fraction()
    metrics = {'loss': loss.detach(), 'loss_x': loss_x.detach(), 'loss_u': loss_u.detach(),
               'pl_correct': ((guess.argmax(dim=1) == y_u_hidden) & known).sum(), 'pl_count': known.sum(),
               'train_acc': 100.0 * num / den}
    if not args.labeled_only:
        metrics |= {'mask_ratio': keep.float().mean(), 'threshold': threshold, 'confidence': confidence.mean()}
    return metrics


# =========================================================================================================
# Main: data, model, loop, evaluation, checkpoints (identical in the three scripts)
# =========================================================================================================
def make_optimizer(model, args, device):
    fused = {'fused': True} if device.type in ('cuda', 'cpu') else {}
    if args.optimizer == 'adam':
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, **fused)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd, **fused)


def evaluate_checkpoint(args, rt):
    """--evaluate PATH: rebuild data and model from the checkpoint's args, print fp32 test top-1/top-5."""
    ckpt = common.load_checkpoint(args.evaluate)
    a = argparse.Namespace(**ckpt['args'])
    a.data_root = args.data_root or a.data_root
    a.download, a.cache_dir = args.download, args.cache_dir
    a.num_classes = None  # the data says how many classes it has; compared with the checkpoint's below
    ds, split = common.load_data(a)
    if len(ds.classes) != ckpt['num_classes']:
        raise UserError(f'{args.evaluate}: trained on {ckpt["num_classes"]} classes, the data has {len(ds.classes)}')
    channels = ds.train_images.shape[1]  # the normalization statistics come from the checkpoint
    model = rt.prepare(build_model(a.arch, ckpt['num_classes'], channels, (0.5,) * channels, (0.5,) * channels,
                                   a.bn_momentum))
    common.load_weights(model, ckpt['ema'], args.evaluate)
    if ds.test_images is not None:
        r, name = common.evaluate(model, ds.test_images, ds.test_labels, a.eval_batch_size), 'test'
    else:  # the NSML layout has no labeled test set
        val = torch.from_numpy(split['val'])
        r, name = common.evaluate(model, ds.train_images[val], ds.train_labels[val], a.eval_batch_size), 'val'
    if rt.is_main:
        print(f'{name} top-1 {r["top1"]:.2f} top-5 {r["top5"]:.2f}')


class StopRequest:
    """SIGTERM (a scheduler's pre-emption, torchrun forwarding it) asks for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        self.requested = True


def train(args, rt):
    say = print if rt.is_main else (lambda *a, **k: None)

    # ---- run directory and resume: decided before anything is written
    out = args.out or common.default_out(args, run_tag(args))
    ckpt_path = os.path.join(out, 'checkpoint.pt')
    if args.resume == 'auto':
        resume = ckpt_path if os.path.isfile(ckpt_path) else None
    else:
        resume = args.resume
        if resume is None and os.path.isdir(out) and os.listdir(out):
            raise UserError(f'run directory {out} is not empty: pass --resume auto to continue it, or another --out')
    ckpt = common.load_checkpoint(resume) if resume else None
    if ckpt is not None and not all(k in ckpt for k in ('model', 'optimizer', 'step')):
        raise UserError(f'--resume {resume}: an evaluation checkpoint (best.pt or a released file) cannot be '
                        f'resumed; pass a run\'s checkpoint.pt')
    if ckpt is not None:
        for key, mine in (('method', METHOD), ('arch', args.arch)):
            if ckpt[key] != mine:
                raise UserError(f'--resume {resume}: checkpoint is {key} {ckpt[key]!r}, this run is {mine!r}')
    rt.barrier()  # every process has looked at the run directory before the first one writes to it

    say(f'git {common.git_sha()}  torch {torch.__version__}  device {rt.describe()}  amp {rt.precision}')
    say('args ' + ' '.join(f'{k}={v}' for k, v in sorted(vars(args).items())), flush=True)

    # ---- data: uint8 tensors on the training device
    common.seed_everything(args.seed)
    ds, split = common.load_data(args)
    args.num_classes = len(ds.classes)
    if ckpt is not None and ckpt['num_classes'] != args.num_classes:
        raise UserError(f'--resume {resume}: checkpoint has {ckpt["num_classes"]} classes, the data {args.num_classes}')
    if len(split['unlabeled']) == 0:
        raise UserError('no unlabeled images left: lower --n-labeled / --n-val or add unlabeled images')
    dev = rt.device
    take = lambda idx: (ds.train_images[idx].to(dev), ds.train_labels[idx].to(dev))
    (x_lab, y_lab), (x_unl, y_unl), (x_val, y_val) = (take(torch.from_numpy(split[k]))
                                                      for k in ('labeled', 'unlabeled', 'val'))
    x_test, y_test = (ds.test_images.to(dev), ds.test_labels.to(dev)) if ds.test_images is not None else (None, None)
    args.augment_kind = augment.choose(args.augment, ds.train_images.shape[-1])
    say(f'data {args.dataset}: {len(x_lab)} labeled, {len(x_unl)} unlabeled, {len(x_val)} val, '
        f'{0 if x_test is None else len(x_test)} test, {args.num_classes} classes, '
        f'{tuple(ds.train_images.shape[1:])} images, augment {args.augment_kind}', flush=True)

    # ---- model, EMA, optimizer
    mean, std = common.pixel_stats(ds.train_images)
    model = rt.prepare(build_model(args.arch, args.num_classes, ds.train_images.shape[1], mean, std, args.bn_momentum,
                                   args.pretrained, args.download))
    ema = common.make_ema(model, args.ema_decay)
    eval_model = model if ema is None else ema.module
    net = rt.compile(rt.ddp(model))  # runs the training forward passes; shares its parameters with `model`
    optimizer = make_optimizer(model, args, dev)
    if rt.world > 1:  # each process draws its own batches and augmentations
        common.seed_everything(args.seed * 1000 + rt.rank)
    streams = {'labeled': common.IndexStream(len(x_lab), args.batch_size, dev),
               'unlabeled': common.IndexStream(len(x_unl), args.unlabeled_batch_size, dev)}
    train_acc = common.TrainAccuracy(dev)
    val_acc = (torch.zeros((), dtype=torch.long, device=dev), torch.ones((), dtype=torch.long, device=dev))
    step, best, history = 0, None, []
    if ckpt is not None:
        common.load_weights(model, ckpt['model'], resume)
        if ema is not None:
            common.load_weights(ema.module, ckpt['ema'], resume)
            ema.n_averaged.fill_(ckpt['ema_n_averaged'])
        optimizer.load_state_dict(ckpt['optimizer'])
        for group in optimizer.param_groups:  # flags given now win over the saved ones
            group['lr'], group['weight_decay'] = args.lr, args.wd
        train_acc.state.copy_(ckpt['train_acc'])
        val_acc = tuple(torch.tensor(v, device=dev) for v in ckpt['val_acc'])
        step, best, history = ckpt['step'], ckpt['best'], ckpt['history']
        if len(ckpt['rng']) == rt.world:
            common.set_rng_state(ckpt['rng'][rt.rank])
            for name, s in streams.items():
                s.load_state_dict(ckpt['streams'][rt.rank][name])
        else:
            say(f'note: {resume} was written by {len(ckpt["rng"])} processes, this run has {rt.world}: sampling '
                f'continues from fresh seeds, so the result will not be bit-identical to an uninterrupted run')
            common.seed_everything(args.seed * 1000 + rt.rank + step)
        derived = ('resume', 'out', 'num_classes', 'augment_kind')
        changed = sorted(k for k, v in ckpt['args'].items() if k not in derived and vars(args).get(k) != v)
        say(f'resumed {resume} at step {step}' + (f' (flags changed: {", ".join(changed)})' if changed else ''))

    # ---- the run directory is written from here on (by the first process only)
    if rt.is_main:
        os.makedirs(out, exist_ok=True)
        if ckpt is None:
            with open(os.path.join(out, 'split.json'), 'w') as f:
                json.dump({k: v.tolist() for k, v in split.items()} | {'split_seed': args.split_seed}, f)
    log = common.RunLog(out, step, args.steps, enabled=rt.is_main)
    meta = {'git_sha': common.git_sha(), 'torch': str(torch.__version__), 'device': rt.describe(), 'amp': rt.precision}

    def save_checkpoint():
        """Every process contributes its RNG and sampler state; the first one writes."""
        states = rt.gather_objects({'rng': common.rng_state(), 'streams': {k: s.state_dict() for k, s in streams.items()}})
        if rt.is_main:
            common.save_atomic({
                'model': model.state_dict(), 'ema': eval_model.state_dict(),
                'ema_n_averaged': 0 if ema is None else int(ema.n_averaged), 'optimizer': optimizer.state_dict(),
                'step': step, 'args': dict(vars(args)), 'method': METHOD, 'arch': args.arch,
                'num_classes': args.num_classes, 'classes': list(ds.classes),
                'rng': [s['rng'] for s in states], 'streams': [s['streams'] for s in states],
                'train_acc': train_acc.state.cpu(), 'val_acc': [int(v) for v in val_acc], 'best': best,
                'history': history, 'meta': meta}, ckpt_path)

    def evaluate_and_log(step, w):
        """EMA weights, fp32, on the first process: log, best.pt. Returns the val (correct, count) for
        --acc-source val, as every process will have it."""
        nonlocal best, history
        if not rt.is_main:
            return None
        lambda_u = 0.0 if args.labeled_only else lambda_u_at(step - 1, args)
        record = {'step': step, 'loss': w['loss'], 'loss_x': w['loss_x'], 'loss_u': w['loss_u'], 'lambda_u': lambda_u,
                  'mask_ratio': w.get('mask_ratio'), 'threshold': w.get('threshold'),
                  'pseudo_label_acc': 100.0 * w['pl_correct'] / w['pl_count'] if w['pl_count'] > 0 else None,
                  'confidence': w.get('confidence'), 'train_acc': w['train_acc']}
        val_counts = [int(v) for v in val_acc]
        for name, (x, y) in (('val', (x_val, y_val)), ('test', (x_test, y_test))):
            r = common.evaluate(eval_model, x, y, args.eval_batch_size) if x is not None and len(x) else None
            record |= {f'{name}_top1': r and r['top1'], f'{name}_top5': r and r['top5'], f'{name}_loss': r and r['loss']}
            if name == 'val' and r is not None:
                val_counts = [r['correct'], max(r['count'], 1)]
        record['ms_per_step'] = w['ms_per_step']
        log.write(record | meta)
        if record['test_top1'] is not None:
            history = (history + [[record['test_top1'], record['test_top5']]])[-20:]
        if best is None or record['val_top1'] is None or record['val_top1'] > best['val_top1']:
            best = {k: record[k] for k in ('step', 'val_top1', 'val_top5', 'test_top1', 'test_top5')}
            common.save_atomic({'ema': eval_model.state_dict(), 'args': dict(vars(args)), 'metrics': best,
                                'method': METHOD, 'arch': args.arch, 'num_classes': args.num_classes,
                                'classes': list(ds.classes), 'meta': meta}, os.path.join(out, 'best.pt'))
        return val_counts

    # ---- training loop: metrics stay on the device until a print or evaluation
    meter = common.Meter(rt)
    no_bad_step = args.steps + 1
    first_nonfinite = torch.full((), no_bad_step, dtype=torch.long, device=dev)
    stop = StopRequest()
    model.train()
    while step < args.steps:
        if step > 0 and step % args.acc_window == 0:
            train_acc.new_window()
        rt.step_begin()
        i_l, i_u = streams['labeled'].next(), streams['unlabeled'].next()
        batch = (x_lab[i_l], y_lab[i_l], x_unl[i_u], y_unl[i_u])
        m = train_step(net, ema, optimizer, rt, batch, train_acc, val_acc, step, args)
        first_nonfinite = torch.where(torch.isfinite(m['loss']), first_nonfinite, first_nonfinite.clamp(max=step + 1))
        meter.add(**m)
        step += 1
        log.tick()
        at_eval = step % args.eval_every == 0 or step == args.steps
        stopping = stop.requested and rt.world == 1  # several processes agree at print steps instead
        if step % args.print_every == 0 or at_eval or stopping:
            bad = int(rt.all_reduce(first_nonfinite.clone(), 'min'))
            if bad != no_bad_step:
                say(f'error: non-finite loss at step {bad}; stopping. The last checkpoint in {out} is from before '
                    f'it (try a lower --lr or --lambda-u, or --amp off)', file=sys.stderr)
                sys.exit(1)
            if rt.world > 1:
                stopping = bool(rt.all_reduce(torch.tensor(int(stop.requested), device=dev), 'max'))
            w = meter.peek()
            mask = f'mask {w["mask_ratio"]:.2f}  ' if 'mask_ratio' in w else 'labeled only  '
            log.progress(step, f'loss_x {w["loss_x"]:.3f}  loss_u {w["loss_u"]:.4f}  {mask}'
                               f'train_acc {w["train_acc"]:.1f}  {w["ms_per_step"]:.0f} ms/step')
        if at_eval:
            evaluation = evaluate_and_log(step, meter.read())
            val_acc = tuple(torch.tensor(v, device=dev) for v in rt.broadcast_object(evaluation))
        if at_eval or stopping:
            save_checkpoint()
            meter.restart_clock()
        if stopping and step < args.steps:
            log.close()
            say(f'stopped by SIGTERM after step {step}; checkpoint saved in {out}; continue with --resume auto')
            return
    log.close()

    # ---- summary
    digest = hashlib.sha256(b''.join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
    print(f'rank {rt.rank}/{rt.world} parameters sha256 {digest[:16]}', flush=True)
    say(f'done: {step} steps in {out}')
    if best is not None and history:
        med = [statistics.median(h[i] for h in history) for i in (0, 1)]
        say(f'best val top-1 {best["val_top1"]:.2f} at step {best["step"]}: test top-1 {best["test_top1"]:.2f} '
            f'top-5 {best["test_top5"]:.2f}; median of last {len(history)} evals: test top-1 {med[0]:.2f} '
            f'top-5 {med[1]:.2f}')


def main(args):
    rt = common.Runtime(args.device, args.amp, args.compile)
    try:
        if args.evaluate:
            evaluate_checkpoint(args, rt)
        else:
            train(args, rt)
    finally:
        rt.close()


if __name__ == '__main__':
    try:
        main(get_args())
    except UserError as e:
        common.fail(str(e))
