"""Time the real training step of each method, as the scripts run it, on synthetic uint8 data resident on
the device: the step <method>/train.py runs (loop.py: IndexStream sampling, gather, on-device augmentation,
guess, update), after warm-up, with a device synchronization around every timed step.

    python etc/bench.py --device cpu                       # this CPU: plain fp32 vs channels_last (+ bf16 where usable)
    python etc/bench.py --device cpu --compile             # + torch.compile (inductor) rows, slow to compile
    python etc/bench.py --device cuda --json bench.json    # GPU: + compiled rows with CUDA graphs
    python etc/bench.py --device cpu --methods adaptive --profile   # + where the fast path's time goes
    python etc/bench.py --methods mixmatch --variants ";--strong-augment cutout:14;--strong-augment randaugment:2,9;--strong-augment augmix:3;--mix cutmix"
                                                           # what each augmentation costs, against the default

Each configuration prints median ms/step, steps/s, images/s (labeled + unlabeled images drawn per step),
the data share (index sampling, gather and the K+1 augmentations alone, timed separately), peak device
memory (CUDA only: the CPU allocator keeps no such count), FLOPs per step (torch.utils.flop_counter: the
guess forward and the training forward + backward) and the TFLOP/s they imply. The first row of each
method/shape is the plain eager fp32 NCHW path of the same code, and every row reports its speed-up over it,
so the ratio is measured on one machine at one time.
"""
import argparse
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('mixmatch', 'fixed', 'adaptive')
sys.path.insert(0, os.path.join(REPO, 'mixmatch'))  # the shared modules (identical in the three folders)

import augment  # noqa: E402
import loop  # noqa: E402
from models import build_model  # noqa: E402
from runtime import Runtime, bf16_unusable  # noqa: E402


def load_train(method):
    spec = importlib.util.spec_from_file_location(f'train_{method}', os.path.join(REPO, method, 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_shape(text):
    h, w, c = (int(v) for v in text.lower().split('x'))
    return c, h, w


def configs(device, want_compile, bf16):
    """(precision, channels_last, compile mode): the plain path first, then the fast ones; bf16 rows only where
    bf16 is usable (the precision --amp auto picks is the last eager row)."""
    fast = 'bf16' if bf16 else 'fp32'
    rows = [('fp32', False, 'off'), ('fp32', True, 'off')]
    if bf16:
        rows += [('bf16', False, 'off'), ('bf16', True, 'off')]
    if device == 'cuda' or want_compile:
        rows.append((fast, True, 'default'))
    if device == 'cuda':
        rows.append((fast, True, 'reduce-overhead'))
    return rows


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def profile_table(step, device, steps, rows=12):
    """Share of the step's time per operator (torch.profiler, self time), the top `rows`."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        sync(device)
    events = [e for e in prof.key_averages() if e.key.startswith('aten::')]
    attr = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    total = sum(getattr(e, attr) for e in events)
    top = sorted(events, key=lambda e: -getattr(e, attr))[:rows]
    return [(e.key, 100.0 * getattr(e, attr) / total) for e in top]


def bench_one(method, shape, precision, channels_last, compile_mode, a, variant=''):
    train = load_train(method)
    args = train.get_args(['--arch', a.arch, '--batch-size', str(a.batch), '--device', a.device, '--amp',
                           {'fp32': 'off'}.get(precision, precision), '--compile', compile_mode, *shlex.split(a.flags),
                           *shlex.split(variant)])
    c, h, w = shape
    args.num_classes, args.augment_kind = 10, augment.choose('auto', h)
    rt = Runtime(args.device, args.amp, args.compile, channels_last=channels_last)
    dev = rt.device
    step_class = loop.MixMatchStep.for_args(args)  # the step the script runs with these flags
    torch.manual_seed(0)
    model = rt.prepare(build_model(args.arch, 10, c, (0.5,) * c, (0.25,) * c, args.bn_momentum,
                                   heads=step_class.heads(args)))
    g = torch.Generator().manual_seed(0)
    x_lab = torch.randint(0, 256, (a.batch * 4, c, h, w), dtype=torch.uint8, generator=g).to(dev)
    y_lab = torch.randint(0, 10, (a.batch * 4,), generator=g).to(dev)
    x_unl = torch.randint(0, 256, (a.batch * 16, c, h, w), dtype=torch.uint8, generator=g).to(dev)
    y_unl = torch.randint(0, 10, (a.batch * 16,), generator=g).to(dev)
    s = loop.make_state(args, rt, model, {'labeled': (x_lab, y_lab), 'unlabeled': (x_unl, y_unl)}, train.POLICIES)
    s.train_acc.add(torch.tensor(4, device=dev), 5)  # 80%: the adaptive policy keeps a realistic share
    s.progress.val_acc = (4, 5)
    s.refresh_val_acc()
    model.train()
    step = step_class(s)  # step(i): the loop's call, sampling included

    def draw():
        i_l, i_u = s.streams['labeled'].next(), s.streams['unlabeled'].next()
        return x_lab[i_l], y_lab[i_l], x_unl[i_u], y_unl[i_u]

    for i in range(a.warmup):
        step(i)
    sync(dev)
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        step(a.warmup + i)
        sync(dev)
        times.append(time.perf_counter() - t0)
    data_times = []
    for _ in range(a.steps):  # the data part alone: sampling, gather, K + 1 augmentations
        t0 = time.perf_counter()
        b = draw()
        for _ in range(args.K):
            loop.augment_views(b[2], args)
        loop.augment_views(b[0], args)
        sync(dev)
        data_times.append(time.perf_counter() - t0)
    if a.profile and precision == a.fast_precision and channels_last and compile_mode == 'off':
        print(f'profile of {method} {h}x{w}x{c} {precision} channels-last, {a.steps} steps, share of aten self time:')
        for name, share in profile_table(step, dev, a.steps):
            print(f'  {share:5.1f}%  {name}')
    flops = None
    if compile_mode == 'off':  # FLOPs of the computation, counted once on the eager path
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            step(0)
        flops = counter.get_total_flops()
    ms = 1000 * statistics.median(times)
    return {'method': method, 'device': rt.describe(), 'arch': args.arch, 'batch': args.batch_size,
            'shape': f'{h}x{w}x{c}', 'precision': precision, 'compile': compile_mode != 'off',
            'compile_mode': compile_mode, 'channels_last': channels_last, 'ms_per_step': ms,
            'steps_per_s': 1000 / ms, 'images_per_s': (args.batch_size + args.unlabeled_batch_size) * 1000 / ms,
            'data_ms': 1000 * statistics.median(data_times),
            'peak_mem_bytes': torch.cuda.max_memory_allocated() if dev.type == 'cuda' else None,
            'flops_per_step': flops, 'torch': str(torch.__version__), 'flags': f'{a.flags} {variant}'.strip()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--methods', default=','.join(METHODS), help='comma-separated subset of mixmatch,fixed,adaptive')
    p.add_argument('--arch', default='wrn28_2')
    p.add_argument('--batch', type=int, default=64, help='labeled = unlabeled batch size (MixMatch: 64)')
    p.add_argument('--shapes', default=None,
                   help='comma-separated HxWxC (default: 28x28x1 on CPU, 32x32x3 and 28x28x1 on CUDA)')
    p.add_argument('--steps', type=int, default=None, help='timed steps per configuration (default CPU 8, CUDA 100)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps first (default CPU 3, CUDA 30)')
    p.add_argument('--compile', action='store_true', help='add torch.compile rows on the CPU (always on CUDA)')
    p.add_argument('--flags', default='', help='more flags for the methods, e.g. "--policy warm-start" or '
                                               '"--accuracy mixed"')
    p.add_argument('--variants', default=None, metavar='FLAGS;FLAGS;...',
                   help='rows of these flag sets instead (the first is the baseline of the speed-up, empty: the '
                        'defaults), each at the precision --amp auto picks, channels-last, eager')
    p.add_argument('--json', default=None, metavar='PATH', help='also write the rows as a JSON list')
    p.add_argument('--profile', action='store_true',
                   help='also print the operators that take the time of the step --amp auto runs (bf16 where usable, '
                        'else fp32; channels-last; torch.profiler)')
    a = p.parse_args()
    cuda = a.device == 'cuda'
    if cuda and not torch.cuda.is_available():
        sys.exit('error: --device cuda: no CUDA device is available')
    a.steps = a.steps or (100 if cuda else 8)
    a.warmup = a.warmup or (30 if cuda else 3)
    shapes = [parse_shape(s) for s in (a.shapes or ('32x32x3,28x28x1' if cuda else '28x28x1')).split(',')]
    no_bf16 = bf16_unusable(a.device)
    a.fast_precision = 'fp32' if no_bf16 else 'bf16'
    if no_bf16:
        print(f'bf16 rows skipped: {no_bf16}')
    print(f'torch {torch.__version__}, {Runtime(a.device, "off").describe()}, {a.arch}, batch {a.batch}+{a.batch}, '
          f'{a.steps} timed steps after {a.warmup} warm-up, median')
    header = (f'{"method":9} {"shape":8} {"prec":4} {"layout":6} {"compile":15} {"ms/step":>8} {"steps/s":>8} '
              f'{"img/s":>7} {"data%":>6} {"peakMiB":>8} {"GFLOP":>7} {"TFLOP/s":>8} {"speedup":>8}')
    print(header)
    rows = []
    runs = ([(a.fast_precision, True, 'off', v.strip()) for v in a.variants.split(';')] if a.variants is not None
            else [(*c, '') for c in configs(a.device, a.compile, bf16=not no_bf16)])
    for method in a.methods.split(','):
        for shape in shapes:
            base, flops = None, None
            for precision, cl, mode, variant in runs:
                r = bench_one(method, shape, precision, cl, mode, a, variant)
                if a.variants is not None:  # each variant counts its own FLOPs
                    flops = None
                flops = r['flops_per_step'] or flops
                r['flops_per_step'] = flops
                base = base or r['ms_per_step']
                rows.append(r)
                mem = f'{r["peak_mem_bytes"] / 2**20:8.0f}' if r['peak_mem_bytes'] is not None else f'{"-":>8}'
                print(f'{method:9} {r["shape"]:8} {precision:4} {"cl" if cl else "nchw":6} {mode:15} '
                      f'{r["ms_per_step"]:8.1f} {r["steps_per_s"]:8.2f} {r["images_per_s"]:7.0f} '
                      f'{100 * r["data_ms"] / r["ms_per_step"]:5.1f}% {mem} {flops / 1e9:7.1f} '
                      f'{flops / r["ms_per_step"] / 1e9:8.2f} {base / r["ms_per_step"]:7.2f}x'
                      + (f'  {variant or "(defaults)"}' if a.variants is not None else ''), flush=True)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
