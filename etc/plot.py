"""Figures from the reproduction runs' logs (etc/results/logs/<preset>/<entry>/s<seed>/log.jsonl, one record
per evaluation; archived there by etc/reproduce.py):

    python etc/plot.py --preset quick

- <preset>-figure1-losses.png: the paper's Figure 1, the unlabeled loss and the total loss per threshold policy
  (table 1's runs, MSE everywhere, so the scales compare), and the same for the CE runs of table 2;
- <preset>-dynamics.png: mask ratio (share of unlabeled images kept), threshold in force, pseudo-label accuracy
  of the kept images and validation top-1, over steps, for the entries of tables 1 and 2;
- <preset>-policies.png: mask ratio and pseudo-label accuracy over steps for every policy of the policy table
  (etc/reproduce.py --table P) that has logs, one line per policy.

Each point is the mean over the --eval-every steps before it; with several seeds the line is their mean and
the band their range.
"""
import argparse
import glob
import os
import sys
import textwrap

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiments  # noqa: E402
import report  # noqa: E402
from runner import REPO, read_log  # noqa: E402

POLICIES = ['mixmatch', 'fixed-0.8', 'adaptive-mse']
CE_RUNS = ['mixmatch', 'adaptive-ce-1', 'adaptive-ce-1.5', 'adaptive-ce-2']
DYNAMICS = ['labeled-only', 'mixmatch', 'fixed-0.8', 'adaptive-mse', 'adaptive-ce-1', 'adaptive-ce-1.5',
            'adaptive-ce-2']


def load(logs_dir):
    """{entry: [records of seed 0, seed 1, ...]} from <logs_dir>/<entry>/s<seed>/log.jsonl"""
    runs = {}
    for path in sorted(glob.glob(os.path.join(logs_dir, '*', 's*', 'log.jsonl'))):
        entry = os.path.basename(os.path.dirname(os.path.dirname(path)))
        runs.setdefault(entry, []).append(read_log(path))
    return runs


COLORS = {e: f'C{i}' for i, e in enumerate(DYNAMICS)}  # one color per entry in every panel


def curve(ax, runs, entry, key, label=None, scale=1.0, style=None):
    """Mean over seeds (and min-max band) of `key` against step; skips entries without the key."""
    seeds = [[(r['step'], r[key] * scale) for r in recs if r.get(key) is not None] for recs in runs.get(entry, [])]
    seeds = [s for s in seeds if s]
    if not seeds:
        return
    n = min(len(s) for s in seeds)
    steps = [p[0] for p in seeds[0][:n]]
    values = [[s[i][1] for s in seeds] for i in range(n)]
    label = label or f'{entry} (n = {len(seeds)})'  # seeds averaged in this line
    line, = ax.plot(steps, [sum(v) / len(v) for v in values], marker='.', label=label,
                    **(style or {'color': COLORS[entry]}))
    if len(seeds) > 1:
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='quick', choices=sorted(experiments.PRESETS))
    p.add_argument('--results-dir', default=os.path.join(REPO, 'etc', 'results'))
    args = p.parse_args(argv)
    runs = load(os.path.join(args.results_dir, 'logs', args.preset))
    if not runs:
        print(f'error: no logs in {args.results_dir}/logs/{args.preset} (run etc/reproduce.py first)', file=sys.stderr)
        return 2
    n_seeds = max(len(v) for v in runs.values())
    figures = os.path.join(args.results_dir, 'figures')
    os.makedirs(figures, exist_ok=True)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for col, (entries, title) in enumerate(((POLICIES, 'MSE unlabeled loss (table 1)'),
                                            (CE_RUNS, 'adaptive CE vs MixMatch (table 2)'))):
        for e in entries:
            curve(axes[0][col], runs, e, 'loss_u')
            curve(axes[1][col], runs, e, 'loss')
        axes[0][col].set_title(f'unlabeled loss: {title}')
        axes[1][col].set_title('total loss = loss_x + lambda_u * loss_u')
        axes[1][col].set_xlabel('step')
        axes[0][col].legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    path1 = save(fig, f'Figure 1 on Fashion-MNIST, 250 labels ({args.preset} preset, up to {n_seeds} seed(s)); '
                      'window means per evaluation interval', os.path.join(figures, f'{args.preset}-figure1-losses.png'))

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    panels = (('mask_ratio', 'mask ratio (share of unlabeled images kept)', 100.0),
              ('threshold', 'threshold in force (confidence)', 1.0),
              ('pseudo_label_acc', 'pseudo-label accuracy of kept images (%)', 1.0),
              ('val_top1', 'validation top-1 (%), EMA weights', 1.0))
    for ax, (key, title, scale) in zip(axes.flat, panels):
        for e in DYNAMICS:
            curve(ax, runs, e, key, scale=scale)
        ax.set_title(title if key != 'mask_ratio' else title + ' (%)')
        ax.grid(alpha=0.3)
    axes[1][1].legend(fontsize=8)  # the val panel has every entry, labeled-only included
    for ax in axes[1]:
        ax.set_xlabel('step')
    path2 = save(fig, f'Training dynamics on Fashion-MNIST, 250 labels ({args.preset} preset, up to {n_seeds} '
                      'seed(s))', os.path.join(figures, f'{args.preset}-dynamics.png'))
    print(f'wrote {path1}\nwrote {path2}')
    path3 = policy_figure(runs, args, figures)
    if path3:
        print(f'wrote {path3}')
    return 0


def policy_figure(runs, args, figures):
    """Mask ratio and pseudo-label accuracy per policy of the policy table; None if fewer than two have logs."""
    entries = [e for e in experiments.TABLES['P'].entries if e in runs and any(r.get('mask_ratio') is not None
                                                                            for recs in runs[e] for r in recs)]
    if len(entries) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(16, 5.5), sharex=True)
    for i, e in enumerate(entries):  # 10 colours x 3 line styles tell up to 30 policies apart
        style = {'color': f'C{i % 10}', 'linestyle': ('-', '--', ':')[i // 10]}
        curve(axes[0], runs, e, 'mask_ratio', scale=100.0, style=style)
        curve(axes[1], runs, e, 'pseudo_label_acc', style=style)
    axes[0].set_title('mask ratio (% of guessed unlabeled images that train)')
    axes[1].set_title('pseudo-label accuracy of the kept images (%)')
    for ax in axes:
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1))  # beside the curves, not over them
    steps = experiments.schedule(args.preset)['steps']
    return save(fig, f'Every policy on Fashion-MNIST, 250 labels ({args.preset} preset, {steps:,} steps; n seeds per '
                     f'line, mean and range).{report.epochs_note(args.preset)}',
                os.path.join(figures, f'{args.preset}-policies.png'))


def save(fig, title, path):
    """Title, layout, PNG; returns the path."""
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 11)), fontsize=10)  # ~11 characters an inch
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == '__main__':
    sys.exit(main())
