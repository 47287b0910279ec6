"""One command for an NVIDIA GPU, offline, in the environment `make setup` builds (`make gpu-check` runs it):

  1. the headline entries (labeled-only, MixMatch at the paper's weight and at lambda_u 75, adaptive CE) of the
     medium preset, --seeds of them (default 1: seed 0), all runs at the same time on the one GPU, and their table;
  2. the released checkpoints evaluated on CUDA against pretrained/manifest.json (etc/verify_pretrained.py);
  3. the training step's speed: etc/bench.py --device cuda --methods adaptive --shapes 28x28x1 (eager fp32,
     bf16, channels-last, compiled and CUDA-graph rows; the target for WRN-28-2, batch 64 + 64, K=2 is
     5 ms/step or less).

    python etc/gpu_check.py                      # runs, bench JSON and table under runs/gpu-check
    python etc/gpu_check.py --seeds 10 --runs-dir runs --results-dir etc/results  # the medium table, 10 seeds

Without a package registry (make setup needs one), any Python with torch >= 2.4, torchvision, numpy,
tensorboardX and progress runs it as `python3 etc/gpu_check.py`, with Fashion-MNIST in its Debian folder.

By default the runs go to --out, not to etc/results: the committed tables stay those of their own command.
`--runs-dir runs --results-dir etc/results` writes the medium table there (the committed medium-v2 table was
written so, before the presets took the original's train-accuracy window). The full preset on a GPU (3 seeds
of every table):

    python etc/reproduce.py --table all --seeds 3 --preset full --device cuda --jobs 4

On one H200 the 12 runs of `--seeds 3` took 5.5 min; verifying the 10 quick-v1 checkpoints and the bench's
first five rows (one compiled) 2.5 min more. With its CUDA-graph row the whole command ran past 8 min: its total
time is not measured.

Exit code 0 if every part passed, 1 if one failed, 2 without a CUDA device.
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = 'labeled-only,mixmatch,mixmatch-75,adaptive-ce-1'


def parts(out, seeds=1, runs_dir=None, results_dir=None):
    """(name, command) of each part, in order: the runs first, as the part that matters most when time is short."""
    py = sys.executable
    reproduce = [py, 'etc/reproduce.py', '--table', '2', '--entries', HEADLINE, '--seeds', str(seeds), '--preset',
                 'medium', '--device', 'cuda', '--jobs', str(4 * seeds),
                 '--runs-dir', runs_dir or os.path.join(out, 'runs'),
                 '--results-dir', results_dir or os.path.join(out, 'results')]
    return [(f'headline, medium preset, {seeds} seed{"s" if seeds > 1 else ""}', reproduce),
            ('released checkpoints', [py, 'etc/verify_pretrained.py', '--device', 'cuda']),
            ('bench', [py, 'etc/bench.py', '--device', 'cuda', '--methods', 'adaptive', '--shapes', '28x28x1',
                       '--json', os.path.join(out, 'bench-gpu.json')])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=os.path.join('runs', 'gpu-check'), help='where its runs and files go')
    p.add_argument('--seeds', type=int, default=1, help='seeds of the medium headline (4 runs each, all at once)')
    p.add_argument('--runs-dir', default=None, help="the headline's run directories (default: OUT/runs)")
    p.add_argument('--results-dir', default=None, help="the headline's tables and archived logs (default: OUT/results)")
    p.add_argument('--dry-run', action='store_true', help='print the commands and exit')
    args = p.parse_args(argv)
    os.chdir(REPO)
    if args.dry_run:
        for name, cmd in parts(args.out, args.seeds, args.runs_dir, args.results_dir):
            print(f'# {name}\n' + ' '.join(cmd))
        return 0
    import torch
    if not torch.cuda.is_available():
        print('error: no CUDA device: this check is for an NVIDIA GPU (the CPU checks are `make test`)',
              file=sys.stderr)
        return 2
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}', flush=True)
    os.makedirs(args.out, exist_ok=True)
    results, t_all = [], time.time()
    for name, cmd in parts(args.out, args.seeds, args.runs_dir, args.results_dir):
        print(f'\n== {name}: {" ".join(cmd)}', flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        results.append((name, rc, time.time() - t0))
    table = os.path.join(args.results_dir or os.path.join(args.out, 'results'), 'medium', 'table2.md')
    if os.path.exists(table):
        print(f'\n== {table}\n' + open(table).read())
    print(f'\n== summary ({(time.time() - t_all) / 60:.1f} min)')
    for name, rc, seconds in results:
        print(f'{name}: {"ok" if rc == 0 else f"FAILED (exit {rc})"}, {seconds:.0f} s')
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == '__main__':
    sys.exit(main())
