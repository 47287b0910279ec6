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
from policy import Policy
from runtime import Runtime, StopRequest, fail, seed_everything

METHOD = 'rotnet'
ROTATIONS = ('0', '90', '180', '270')  # the classes: counter-clockwise quarter turns
# Shared flags of the semi-supervised step that pretraining does not have: refused, and left out of --help.
NOT_READ = frozenset({'K', 'T', 'alpha', 'mix', 'loss', 'lambda_u', 'rampup_steps', 'rampup_start', 'labeled_only',
                      'drop_unkept', 'train_acc', 'unlabeled_batch_size', 'rot_weight', 'policy',
                      'guess_views'})


def add_method_flags(parser):
    parser.set_defaults(loss='ce')  # not read; names the default run directory
    return parser.add_argument_group('RotNet pretraining')


def check_method_args(args):
    pass


POLICIES = {'none': Policy}  # no pseudo-labels; the interface's empty policy keeps the checkpoint format


def get_args(argv=None):
    return flags.parse(argv, __doc__, METHOD, add_method_flags, check_method_args, POLICIES, NOT_READ)


def all_rotations(images):
    """Every image turned all four ways: rows [all at 0, all at 90, ...], and their rotation labels."""
    turns = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return augment.rotate90(images.repeat(4, 1, 1, 1), turns), turns


def train_step(net, ema, optimizer, rt, train_acc, images, args):
    """One step: every image of the batch augmented (crop, flip and the augmentation flags), turned four ways,
    one forward, cross-entropy on the rotation."""
    x, turns = all_rotations(augment.augment(images, args.augment_kind, args.randaugment, args.augmix, args.cutout))
    with rt.autocast():
        logits = net(x.contiguous(memory_format=rt.memory_format)).float()
    loss = F.cross_entropy(logits, turns)
    rt.backward_and_step(loss, optimizer)
    if ema is not None:
        ema.update_parameters(net)
    correct = (logits.argmax(dim=1) == turns).sum()
    train_acc.add(*rt.all_reduce(torch.stack([correct, torch.full_like(correct, len(turns))])))
    num, den = train_acc.fraction()
    zero = torch.zeros((), device=loss.device)
    return {'loss': loss.detach(), 'loss_x': loss.detach(), 'loss_u': zero, 'train_acc': 100.0 * num / den}


def make_optimizer(model, args, device):
    fused = {'fused': True} if device.type in ('cuda', 'cpu') else {}
    if args.optimizer == 'adam':
        return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, **fused)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd,
                           nesterov=args.nesterov, **fused)


# =========================================================================================================
# The loop: the three scripts' loop, with the rotation step
# =========================================================================================================
def train(args, rt):
    say = print if rt.is_main else (lambda *a, **k: None)
    run = checkpoint.open_run(args, METHOD, 'pretrain', rt)  # decided before anything is written
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
    args.num_classes = len(ROTATIONS)
    dev = rt.device
    sets = data.on_device(ds, split, dev)
    (x_lab, y_lab), (x_unl, y_unl) = sets['labeled'], sets['unlabeled']
    args.augment_kind = augment.choose(args.augment, ds.train_images.shape[-1])
    x_train = torch.cat([x_lab, x_unl])  # every training image, its label unused
    say(f'data {args.dataset}: {len(x_train)} training images (labels unused), '
        + ', '.join(f'{0 if x is None else len(x)} {k}' for k, (x, _) in sets.items() if k in ('val', 'test'))
        + f', {tuple(ds.train_images.shape[1:])} images, augment {args.augment_kind}, 4 rotations each', flush=True)
    for line in data.notes(ds, split):
        say(line, flush=True)
    if ds.train_images.shape[-1] != ds.train_images.shape[-2]:
        raise UserError(f'RotNet turns images by quarter turns: they must be square, not '
                        f'{tuple(ds.train_images.shape[-2:])}')

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
    streams = {'train': data.IndexStream(len(x_train), args.batch_size, dev)}
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
    eval_sets = {k: all_rotations(sets[k][0]) if sets[k][0] is not None and len(sets[k][0]) else sets[k]
                 for k in ('val', 'test')}
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
        for group in optimizer.param_groups:
            group['lr'] = semisup.lr_at(step, args)
        m = train_step(net, ema, optimizer, rt, train_acc, x_train[streams['train'].next()], args)
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
            log.progress(step, f'rotation loss {w["loss_x"]:.3f}  rotation acc {w["train_acc"]:.1f}  '
                               f'{w["ms_per_step"]:.0f} ms/step')
        if at_eval:
            w = meter.read() | {'lr': optimizer.param_groups[0]['lr']}
            if rt.is_main:
                wants_test = (lambda v: args.test_when == 'every-eval' or step == args.steps
                              or progress.improves(v))
                record, val = metrics.evaluate_and_log(eval_model, eval_sets, w, 0.0, step, log, meta,
                                                       args.eval_batch_size, wants_test)
                if progress.add(record):
                    checkpoint.save_best(run, eval_model, progress, args, METHOD, ROTATIONS, meta)
                progress.val_acc = val or progress.val_acc
            progress.val_acc = rt.broadcast_object(progress.val_acc)
        if at_eval or stopping:
            checkpoint.save_training(run, rt, progress, args, METHOD, ROTATIONS, meta, model, ema, optimizer, policy,
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
