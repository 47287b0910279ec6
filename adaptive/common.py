"""What the three methods share: flags, device and precision, MixMatch's pieces (sharpen, mixup, losses),
EMA, train accuracy, evaluation, checkpoints, run directory and logs. Shared module (identical copies)."""
import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

import augment
import data
import models
from models import UserError


# =========================================================================================================
# Flags
# =========================================================================================================
class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends with one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def get_args_parser(add_help=False):
    p = OneLineParser(add_help=add_help)
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='fashion_mnist', choices=data.DATASETS,
                   help='fashion_mnist (public stand-in for the paper\'s private NAVER fashion data), a torchvision '
                        'dataset, or folder: images under --data-root (NSML layout or labeled/unlabeled/test)')
    g.add_argument('--data-root', default=None, metavar='DIR',
                   help=f'dataset location (default: {data.FASHION_MNIST_SYSTEM_DIR} for fashion_mnist, ./data '
                        'otherwise)')
    g.add_argument('--download', action='store_true',
                   help='allow torchvision to download the dataset / ImageNet weights (never done otherwise)')
    g.add_argument('--n-labeled', type=int, default=None,
                   help='labeled training images, class-balanced (default 250; folder: all labeled rows minus val; '
                        'the paper: ~13k of 265 classes, 4k in table 3)')
    g.add_argument('--n-val', type=int, default=None,
                   help='validation images held out of the labeled images (default min(5000, 10%% of them); the '
                        'original held out 20%%)')
    g.add_argument('--split-seed', type=int, default=0, help='seed of the labeled/val/unlabeled split')
    g.add_argument('--image-size', type=int, default=96,
                   help='folder datasets: side in pixels images are decoded to once (the original used 224)')
    g.add_argument('--num-classes', type=int, default=None,
                   help='folder datasets: number of classes (default: largest label + 1 / class folders)')
    g.add_argument('--cache-dir', default=os.path.join(os.path.expanduser('~'), '.cache', 'adthmix'),
                   help='folder datasets: where decoded uint8 images are cached')
    g.add_argument('--augment', default='auto', choices=augment.AUGMENTATIONS,
                   help=f'auto: pad-crop + flip below {augment.RRC_MIN_SIZE} px, random-resized-crop + flip above')

    g = p.add_argument_group('model')
    g.add_argument('--arch', default='wrn28_2', choices=models.ARCHS,
                   help='wrn28_2: MixMatch\'s CIFAR WideResNet (1.5M params); the paper used efficientnet_b3')
    g.add_argument('--pretrained', action='store_true',
                   help='torchvision ImageNet weights from the local torch cache (the paper did; exits if absent)')
    g.add_argument('--bn-momentum', type=float, default=0.01,
                   help='BatchNorm running-stat momentum. MixMatch\'s 0.001 suits 2^20-step runs but leaves running '
                        'stats near their init for thousands of steps; 0.01 settles in a few hundred steps and is '
                        'still smooth (PyTorch default 0.1)')

    g = p.add_argument_group('MixMatch')
    g.add_argument('--K', type=int, default=2, help='augmentations per unlabeled image for the guess (paper: 2)')
    g.add_argument('--T', type=float, default=0.5, help='sharpening temperature (paper: 0.5)')
    g.add_argument('--alpha', type=float, default=0.75,
                   help='mixup Beta(alpha, alpha), lambda = max(l, 1-l) (paper: 0.75; 0 = no mixup)')
    g.add_argument('--loss', choices=('mse', 'ce'),
                   help='unlabeled loss on mixed unlabeled rows: mse (mean over samples x classes, MixMatch) or '
                        'ce (soft cross-entropy, the paper\'s adaptive method)')
    g.add_argument('--lambda-u', type=float, default=None,
                   help='unlabeled loss weight (default 75 with --loss mse, MixMatch\'s CIFAR value; the paper used '
                        '150 with 265 classes; 1 with --loss ce, the paper\'s)')
    g.add_argument('--labeled-only', action='store_true',
                   help='baseline: the same step on the labeled images alone (augmentation, mixup among them, EMA); '
                        'no unlabeled image is guessed or trained on (the original\'s "only supervised" sessions '
                        '458-465). --lambda-u 0 is not this: its unlabeled images still enter mixup')
    g.add_argument('--drop-unkept', action='store_true',
                   help='remove unkept unlabeled images from the batch (as the original, variable shapes) instead '
                        'of masking them out of mixup and loss; the two differ only in BatchNorm batch statistics')

    g = p.add_argument_group('optimization')
    g.add_argument('--optimizer', default='adam', choices=('adam', 'sgd'),
                   help='adam: AdamW, decoupled decay (MixMatch); sgd: SGD momentum 0.9, coupled decay (original)')
    g.add_argument('--lr', type=float, default=None, help='learning rate (default adam 2e-3, sgd 5e-4 as the original)')
    g.add_argument('--wd', type=float, default=None,
                   help='weight decay (default adam 0.02, i.e. MixMatch\'s 0.02*lr per step; sgd 4e-4 as the original)')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum (original: 0.9)')
    g.add_argument('--batch-size', type=int, default=64,
                   help='labeled images per step and per process: under torchrun the global batch is N times this '
                        '(original: 20)')
    g.add_argument('--unlabeled-batch-size', type=int, default=None,
                   help='unlabeled images per step and per process, before the K augmentations (default '
                        '--batch-size; original: 50)')
    g.add_argument('--ema-decay', type=float, default=0.999,
                   help='EMA of weights used for evaluation, decay per step, warmed up as min(decay, (1+n)/(10+n)); '
                        '0 = evaluate the raw weights (the original had no EMA)')
    g.add_argument('--steps', type=int, default=65536,
                   help='optimizer steps in total (default 2^16: about 7 h on a 2-core AVX512-BF16 CPU, WRN-28-2 on '
                        'Fashion-MNIST, 0.37 s/step + 30 s per evaluation; MixMatch used 2^20)')
    g.add_argument('--eval-every', type=int, default=1024, help='steps between evaluations and checkpoints')
    g.add_argument('--acc-window', type=int, default=1024,
                   help='steps over which the running train accuracy is counted before it restarts (the original: '
                        'one epoch); every method logs it, the adaptive threshold follows it')
    g.add_argument('--print-every', type=int, default=100, help='steps between progress lines / bar metric updates')

    g = p.add_argument_group('run')
    g.add_argument('--out', default=None, metavar='DIR',
                   help='run directory (default runs/<method>-<dataset>-<labels>-<arch>-<flags that matter>-s<seed>)')
    g.add_argument('--resume', default=None, metavar='auto|PATH',
                   help='auto: continue <out>/checkpoint.pt if present, else start fresh; PATH: continue that file')
    g.add_argument('--evaluate', default=None, metavar='PATH',
                   help='only evaluate a checkpoint (any method\'s) in fp32 on its test set and print one line')
    g.add_argument('--seed', type=int, default=0, help='seed of initialization, sampling and augmentation')
    g.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='auto: cuda if available')
    g.add_argument('--amp', default='auto', choices=('auto', 'bf16', 'fp16', 'off'),
                   help='autocast precision for training; auto: bf16 on CUDA and on CPUs with AVX512-BF16/AMX, '
                        'else off. Evaluation is always fp32')
    g.add_argument('--eval-batch-size', type=int, default=1000, help='images per evaluation forward pass')
    g.add_argument('--compile', default='off', choices=('off', 'default', 'reduce-overhead'),
                   help='torch.compile the model: default (inductor kernels, CPU or CUDA) or reduce-overhead '
                        '(inductor + CUDA graphs, CUDA only); the first steps are slow while it compiles')
    return p


def finish_args(args, method):
    """Fill the defaults that depend on other flags and reject out-of-range values (one line, exit 2)."""
    if args.lambda_u is None:
        args.lambda_u = 75.0 if args.loss == 'mse' else 1.0
    if args.lr is None:
        args.lr = 2e-3 if args.optimizer == 'adam' else 5e-4
    if args.wd is None:
        args.wd = 0.02 if args.optimizer == 'adam' else 4e-4
    if args.unlabeled_batch_size is None:
        args.unlabeled_batch_size = args.batch_size
    if args.n_labeled is None and args.dataset != 'folder':
        args.n_labeled = 250
    checks = [
        (args.batch_size >= 1, '--batch-size must be at least 1'),
        (args.unlabeled_batch_size >= 1, '--unlabeled-batch-size must be at least 1'),
        (args.eval_batch_size >= 1, '--eval-batch-size must be at least 1'),
        (args.lambda_u >= 0, '--lambda-u must be >= 0'),
        (args.K >= 1, '--K must be at least 1'),
        (args.T > 0, '--T must be > 0'),
        (args.alpha >= 0, '--alpha must be >= 0'),
        (args.lr > 0 and args.wd >= 0, '--lr must be > 0 and --wd >= 0'),
        (0 <= args.ema_decay < 1, '--ema-decay must be in [0, 1)'),
        (0 < args.bn_momentum <= 1, '--bn-momentum must be in (0, 1]'),
        (min(args.steps, args.eval_every, args.print_every, args.acc_window) >= 1,
         '--steps, --eval-every, --print-every and --acc-window must be at least 1'),
        (args.n_labeled is None or args.n_labeled >= 1, '--n-labeled must be at least 1'),
        (args.n_val is None or args.n_val >= 0, '--n-val must be >= 0'),
        (args.image_size >= 8, '--image-size must be at least 8'),
        (not (args.drop_unkept and args.compile != 'off'), '--drop-unkept makes batch shapes vary; it cannot be '
                                                            'combined with --compile'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    args.method = method
    return args


# =========================================================================================================
# Device and precision: the one place that decides them
# =========================================================================================================
def bf16_unusable(device):
    """Why bf16 autocast would not pay off on this device, or None where it does. On a CPU it needs oneDNN's
    bf16 kernels (AVX512-BF16 or AMX): elsewhere bf16 convolutions fall back to a reference kernel about 5x
    slower than fp32."""
    device = torch.device(device)
    if device.type == 'cuda':
        return None if torch.cuda.is_bf16_supported() else 'this GPU has no bf16 support'
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return 'this CPU has no AVX512-BF16 or AMX, so oneDNN has no bf16 kernels (bf16 would be ~5x slower than fp32)'
    return None


class Runtime:
    """Device, precision, compilation and processes. Under torchrun (WORLD_SIZE > 1) every process trains
    on its own device (cuda:LOCAL_RANK, or the CPU with gloo) and gradients are averaged by DDP."""

    def __init__(self, device='auto', amp='auto', compile='off', channels_last=True):
        self.world = int(os.environ.get('WORLD_SIZE', 1))
        self.rank = int(os.environ.get('RANK', 0))
        self.is_main = self.rank == 0
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device == 'cuda' and not torch.cuda.is_available():
            raise UserError('--device cuda: no CUDA device is available (use --device cpu)')
        if amp == 'auto':
            amp = 'off' if bf16_unusable(device) else 'bf16'
        if amp == 'fp16' and device != 'cuda':
            raise UserError('--amp fp16 needs CUDA; use --amp bf16 or off on the CPU')
        if compile == 'reduce-overhead' and device != 'cuda':
            raise UserError('--compile reduce-overhead (CUDA graphs) needs CUDA; use --compile default on the CPU')
        if device == 'cuda' and self.world > 1:
            device = f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}'
            torch.cuda.set_device(device)
        self.device = torch.device(device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group('nccl' if self.device.type == 'cuda' else 'gloo')
        self.precision = amp
        self.dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'off': None}[amp]
        self.scaler = torch.amp.GradScaler('cuda') if amp == 'fp16' else None
        self.compile_mode = compile
        # channels_last: 1.2-1.5x faster convolutions on CPU (oneDNN) and on CUDA tensor cores
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32

    # ---- processes (all no-ops in a single process)
    def all_gather(self, t):
        """Concatenation over processes, rank-major."""
        if self.world == 1:
            return t
        out = torch.empty((self.world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        gather = getattr(dist, 'all_gather_single', None) or dist.all_gather_into_tensor  # torch < 2.14: the latter
        gather(out, t.contiguous())
        return out

    def all_reduce(self, t, op='sum'):
        if self.world > 1:
            dist.all_reduce(t, {'sum': dist.ReduceOp.SUM, 'min': dist.ReduceOp.MIN, 'max': dist.ReduceOp.MAX}[op])
        return t

    def gather_objects(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def ddp(self, model):
        """DDP wrapper (gradients averaged in backward; BatchNorm statistics are each process's own, rank 0's
        broadcast at every forward; no SyncBatchNorm), or the model itself in a single process."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model):
        return model.to(self.device, memory_format=self.memory_format)

    def compile(self, model, backend='inductor'):
        """The module that runs forward passes: `model` itself, or a compiled wrapper sharing its parameters
        (checkpoints always save `model`, whose state_dict keys carry no compile prefix)."""
        if self.compile_mode == 'off':
            return model
        return torch.compile(model, backend=backend, mode=None if self.compile_mode == 'default' else self.compile_mode)

    def step_begin(self):
        """Once per training iteration: CUDA graphs (reduce-overhead) may reuse the previous step's output
        memory from here on."""
        if self.compile_mode == 'reduce-overhead':
            torch.compiler.cudagraph_mark_step_begin()

    def describe(self):
        procs = f', {self.world} processes' if self.world > 1 else ''
        if self.device.type == 'cuda':
            return f'cuda ({torch.cuda.get_device_name(self.device)}{procs})'
        return f'cpu ({torch.get_num_threads()} threads{procs})'


# =========================================================================================================
# MixMatch pieces
# =========================================================================================================
def sharpen(p, T):
    """p^(1/T), renormalized (MixMatch eq. 7)."""
    p = p.pow(1.0 / T)
    return p / p.sum(dim=1, keepdim=True)


def sample_mixup_lambda(alpha, device):
    """lambda ~ Beta(alpha, alpha), then max(l, 1-l) so every mixed row stays closest to its own input.
    Drawn on the device from its global RNG (no host sync, saved with the checkpoint)."""
    if alpha <= 0:
        return torch.ones((), device=device)
    a = torch.full((), float(alpha), device=device)
    lam = torch.distributions.Beta(a, a, validate_args=False).sample()  # validation would sync
    return torch.maximum(lam, 1 - lam)


def mixup_partner(valid):
    """A random permutation that maps valid rows onto valid rows and the rest onto the rest, so dropped
    (unkept) samples never mix with kept ones. Static shapes, no host sync."""
    shuffled = (torch.rand(valid.shape, device=valid.device) + (~valid).float()).argsort()  # valid first, random
    in_order = (~valid).to(torch.uint8).argsort(stable=True)                                # valid first, by index
    partner = torch.empty_like(shuffled)
    partner[in_order] = shuffled
    return partner


def soft_cross_entropy(logits, targets):
    """Per row: -sum_c target_c * log softmax(logits)_c."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def unlabeled_loss(logits, targets, mask, kind):
    """Mean over kept rows (mask) of the MSE between softmax and target (averaged over classes too, as
    MixMatch) or of the soft cross-entropy. Zero when nothing is kept."""
    if kind == 'mse':
        per_row = (torch.softmax(logits.float(), dim=1) - targets).pow(2).mean(dim=1)
    else:
        per_row = soft_cross_entropy(logits, targets)
    mask = mask.float()
    return (per_row * mask).sum() / mask.sum().clamp(min=1)


# =========================================================================================================
# Train accuracy (the adaptive threshold follows it; every method logs it)
# =========================================================================================================
class TrainAccuracy:
    """Running top-1 on the labeled rows of the current window of --acc-window steps, as integer counts on
    the device. At a window's start no batch has been counted yet and the previous window's last value is
    used (the original's "last acc val update"); the very first window starts at 0."""

    def __init__(self, device):
        self.state = torch.zeros(4, dtype=torch.long, device=device)  # correct, seen, seed_correct, seed_seen

    def add(self, correct, seen):
        """correct, seen: counts of one step (tensors or ints), already summed over processes."""
        self.state[0] += correct
        self.state[1] += seen

    def fraction(self):
        """(numerator, denominator) of the accuracy in force, as device tensors; denominator >= 1."""
        fresh = self.state[1] > 0
        num = torch.where(fresh, self.state[0], self.state[2])
        den = torch.where(fresh, self.state[1], self.state[3])
        return num, den.clamp(min=1)

    def new_window(self):
        fresh = self.state[1] > 0
        self.state[2:] = torch.where(fresh, self.state[:2], self.state[2:])
        self.state[:2] = 0


# =========================================================================================================
# EMA of weights, through torch.optim.swa_utils
# =========================================================================================================
class EMA(AveragedModel):
    """swa_utils' AveragedModel over parameters and buffers (BatchNorm statistics too), with an update that
    never reads n_averaged on the host: the stock update_parameters does (`bool(n_averaged == 0)` and a
    host-to-device copy), which is a device synchronization every step on CUDA."""

    def update_parameters(self, model):
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        floats = [i for i, t in enumerate(mine) if t.is_floating_point()]
        counters = [i for i, t in enumerate(mine) if not t.is_floating_point()]  # BatchNorm's num_batches_tracked
        self.multi_avg_fn([mine[i].detach() for i in floats], [theirs[i] for i in floats], self.n_averaged)
        if counters:
            torch._foreach_copy_([mine[i].detach() for i in counters], [theirs[i] for i in counters])
        self.n_averaged += 1


def make_ema(model, decay):
    """EMA of `model` for evaluation, or None when decay is 0. The n-th update (n = 0, 1, ...) uses decay
    min(decay, (1+n)/(10+n)) and the first copies, so a 500-step run is not dominated by its initialization."""
    if decay == 0:
        return None

    def ema_update(ema_params, params, n_averaged):
        d = torch.where(n_averaged == 0, 0.0, torch.clamp((1.0 + n_averaged) / (10.0 + n_averaged), max=decay))
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    device = next(model.parameters()).device
    return EMA(model, device=device, multi_avg_fn=ema_update, use_buffers=True)


# =========================================================================================================
# Evaluation
# =========================================================================================================
@torch.no_grad()
def evaluate(model, images, labels, batch_size, memory_format=torch.channels_last):
    """fp32, per-sample top-1/top-5 (%) and mean cross-entropy. Returns a dict of Python numbers."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct1 = correct5 = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = labels[i:i + batch_size].to(device, non_blocking=True)
        logits = model(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 = correct1 + (top[:, 0] == y).sum()
        correct5 = correct5 + (top == y[:, None]).any(dim=1).sum()
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction='sum')
    model.train(was_training)
    n = max(len(images), 1)
    c1, c5, loss = (t.item() for t in (correct1, correct5, loss_sum))
    return {'top1': 100.0 * c1 / n, 'top5': 100.0 * c5 / n, 'loss': loss / n, 'correct': c1, 'count': len(images)}


# =========================================================================================================
# Data on the device
# =========================================================================================================
class IndexStream:
    """Endless shuffled passes over range(n) on the device, `batch` indices at a time (epochs without
    a DataLoader). Its state travels in checkpoints so a resumed run draws the same batches."""

    def __init__(self, n, batch, device):
        self.n, self.batch, self.device = n, batch, device
        self.perm = torch.zeros(0, dtype=torch.long, device=device)
        self.pos = 0

    def next(self):
        while self.pos + self.batch > len(self.perm):
            self.perm = torch.cat([self.perm[self.pos:], torch.randperm(self.n, device=self.device)])
            self.pos = 0
        self.pos += self.batch
        return self.perm[self.pos - self.batch:self.pos]

    def state_dict(self):
        return {'perm': self.perm.cpu(), 'pos': self.pos}

    def load_state_dict(self, s):
        self.perm, self.pos = s['perm'].to(self.device), s['pos']


def pixel_stats(images):
    """Per-channel mean and std in [0, 1] of uint8 images, computed in chunks."""
    c = images.shape[1]
    total, sq, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for i in range(0, len(images), 4096):
        x = images[i:i + 4096].double().div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        sq += (x * x).sum(1)
        n += x.shape[1]
    mean = total / n
    std = (sq / n - mean * mean).clamp(min=1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def load_data(args):
    """Dataset + split for these args. Returns (dataset, split)."""
    ds = data.load_dataset(args.dataset, args.data_root, args.download, args.image_size, args.num_classes,
                           args.cache_dir)
    split = data.make_split(ds.train_labels.numpy(), len(ds.classes), args.n_labeled, args.n_val, args.split_seed)
    return ds, split


# =========================================================================================================
# Run directory, checkpoints, logs
# =========================================================================================================
def git_sha():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=here, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def default_out(args, method_tag):
    labels = args.n_labeled if args.n_labeled is not None else 'all'
    if args.labeled_only:  # the unlabeled-loss flags play no part
        name = f'labeled-only-{args.dataset}-{labels}-{args.arch}-s{args.seed}'
    else:
        name = (f'{args.method}-{args.dataset}-{labels}-{args.arch}-{args.loss}-lu{args.lambda_u:g}-{method_tag}'
                f'-s{args.seed}')
    return os.path.join('runs', name)


def save_atomic(obj, path):
    """Write to a temp file in the same folder, fsync, rename: a kill during the save leaves the old file."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """A checkpoint of this release, loaded with weights_only (no code runs). A file named like the released
    ones, <entry>-<preset>-s<seed>-<hex>.pt, must have a sha256 that starts with <hex>."""
    if not os.path.isfile(path):
        raise UserError(f'checkpoint not found: {path}')
    named = re.fullmatch(r'.+-s\d+-([0-9a-f]{8,64})\.pt', os.path.basename(path))
    if named:
        with open(path, 'rb') as f:
            digest = hashlib.file_digest(f, 'sha256').hexdigest()
        if not digest.startswith(named.group(1)):
            raise UserError(f'{path}: sha256 {digest[:16]}... does not match the {named.group(1)} in its name (the '
                            f'released files\' pattern): corrupt or changed; fetch it again, or rename your own file')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a usable checkpoint"
        raise UserError(f'cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}') from None
    missing = [k for k in ('ema', 'args', 'method', 'arch', 'num_classes') if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f'{path} is not a checkpoint of this release (missing {", ".join(missing)})')
    return ckpt


def load_weights(model, state, path):
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f'{path}: weights do not fit the model ({str(e).splitlines()[0][:160]})') from None


def rng_state():
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s):
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])


class RunLog:
    """<out>/log.jsonl (one JSON object per evaluation), TensorBoard under <out>/tb, and console output:
    a progress bar with ETA on a terminal, plain lines otherwise."""

    def __init__(self, out, start_step, total_steps, enabled=True):
        self.enabled = enabled
        if not enabled:  # processes other than rank 0 write nothing
            return
        from tensorboardX import SummaryWriter
        self.path = os.path.join(out, 'log.jsonl')
        if start_step > 0 and os.path.exists(self.path):  # drop lines a killed run wrote after its checkpoint
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)['step'] <= start_step:
                            kept.append(line.rstrip('\n') + '\n')
                    except (ValueError, KeyError, TypeError):  # a line cut short by the kill
                        pass
            with open(self.path, 'w') as f:
                f.writelines(kept)
        elif os.path.exists(self.path):
            os.remove(self.path)
        self.tb = SummaryWriter(os.path.join(out, 'tb'), purge_step=start_step if start_step > 0 else None)
        self.bar = None
        if sys.stdout.isatty():
            from progress.bar import Bar
            self.bar = Bar('train', max=total_steps, suffix='%(index)d/%(max)d  ETA %(eta_td)s', file=sys.stdout)
            self.bar.index = start_step

    def progress(self, step, text):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.suffix = '%(index)d/%(max)d  ETA %(eta_td)s  ' + text.replace('%', '%%')
            self.bar.goto(step)
        else:
            print(f'step {step}  {text}', flush=True)

    def tick(self):
        if self.enabled and self.bar is not None:
            self.bar.next()

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != 'step' and v is not None and math.isfinite(v):
                self.tb.add_scalar(k, v, record['step'])
        self.tb.flush()
        if self.bar is not None:
            print(file=sys.stdout)
        print('eval ' + '  '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                  for k, v in record.items() if isinstance(v, (int, float))), flush=True)

    def close(self):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.finish()
        self.tb.close()


class Meter:
    """Sums of per-step device scalars; read (one host sync, and one all-reduce across processes) only at
    print and evaluation intervals."""

    def __init__(self, rt):
        self.rt, self.sums, self.steps, self.t0 = rt, {}, 0, time.perf_counter()

    def add(self, **values):
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v.detach().float() if k in self.sums else v.detach().float()
        self.steps += 1

    def peek(self):
        """Window means over steps and processes as Python floats, and ms per step."""
        keys = list(self.sums)
        values = self.rt.all_reduce(torch.stack([self.sums[k] for k in keys])).cpu().tolist() if keys else []
        out = {k: v / max(self.steps, 1) / self.rt.world for k, v in zip(keys, values)}
        out['ms_per_step'] = 1000 * (time.perf_counter() - self.t0) / max(self.steps, 1)
        return out

    def read(self):
        """peek(), then start a new window."""
        out = self.peek()
        self.sums, self.steps = {}, 0
        return out

    def restart_clock(self):
        """Exclude evaluation and checkpoint time from ms_per_step."""
        self.t0 = time.perf_counter()


def fail(message):
    """One line on stderr (from the first process only under torchrun), exit code 2."""
    if int(os.environ.get('RANK', 0)) == 0:
        print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
