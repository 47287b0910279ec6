"""Release the best-val EMA checkpoint of each table entry (one seed of an etc/reproduce.py preset) into
pretrained/: fp16 weights (half the size; evaluation runs in fp32 after loading), named
<entry>-<preset>-s<seed>-<first 8 hex of sha256>.pt, evaluated on the CPU with the release's own --evaluate,
and listed in pretrained/manifest.json and pretrained/README.md.

    python etc/release_pretrained.py --preset quick --seed 0

An entry without a finished run directory here keeps the file and manifest row of an earlier release of the
same preset and seed; the releases of other presets and seeds stay; files that the new manifest no longer lists
are removed. The manifest lists the releases with the most training steps first.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'mixmatch'))
import experiments  # noqa: E402
import runner  # noqa: E402
from models import build_model  # noqa: E402
from verify_pretrained import MANIFEST, REPO, evaluate_file, sha256  # noqa: E402

OUT = os.path.join(REPO, 'pretrained')


def slim(best_path):
    """The parts of a best.pt that --evaluate needs; the parameters in fp16, the buffers (BatchNorm running
    statistics, input normalization) as they are."""
    ckpt = torch.load(best_path, map_location='cpu', weights_only=True)
    channels = ckpt['ema']['mean'].shape[1]
    model = build_model(ckpt['arch'], ckpt['num_classes'], channels, (0.5,) * channels, (0.5,) * channels, 0.01)
    params = {name for name, _ in model.named_parameters()}
    ema = {k: v.half() if k in params else v for k, v in ckpt['ema'].items()}
    return {'ema': ema, **{k: ckpt[k] for k in ('args', 'metrics', 'method', 'arch', 'num_classes', 'classes', 'meta')}}


def today(command):
    """A training command in today's flags (the manifest keeps it as it ran): the same run."""
    return ' '.join(experiments.script_flags.upgrade(command.split()))


def readme(rows):
    """pretrained/README.md: one section per release (preset and seed), the longest-trained first."""
    lines = ['# Released checkpoints', '',
             'The best-val EMA weights (fp16) of table entries, one seed of a preset of `etc/reproduce.py` on '
             'Fashion-MNIST (WRN-28-2), one section per release below. Checked by `python etc/verify_pretrained.py` '
             '(sha256, then the numbers below, within 0.02 points), which CI runs.', '',
             'Evaluate one: `python <method>/train.py --evaluate pretrained/<file>` (any of the three scripts; '
             'weights_only loading; a file whose sha256 does not start with the hex in its name is refused). The '
             'numbers are what that prints on the CPU in fp32 for the fp16 file; "run" is the fp32 number the '
             'training run logged for the same checkpoint, on the machine it trained on. Through torch.hub '
             '(`hubconf.py`): `<entry>_<preset>` loads one file (dashes and dots as underscores, e.g. '
             '`adaptive_ce_1_medium_v2`), and `<entry>` the longest-trained release of that entry.']
    for preset, seed in dict.fromkeys((r['preset'], r['seed']) for r in release_order(rows)):
        group = [r for r in rows if (r['preset'], r['seed']) == (preset, seed)]
        lines += ['', f'## `{preset}` preset, seed {seed}: {group[0]["steps"]} steps', '',
                  f'Made by `python etc/release_pretrained.py --preset {preset} --seed {seed}`'
                  + (' from runs trained with the first release\'s defaults: each training command spells them out, '
                     'so it reproduces its file with the current code' if experiments.PRESETS[preset]['setup'] == 'v1'
                     else '') + '.', '',
                  '| file | sha256 | table entry | session | training command | test top-1 | test top-5 | run top-1 |',
                  '|---|---|---|---|---|---|---|---|']
        for r in group:
            lines.append(f'| `{r["file"]}` | `{r["sha256"]}` | {r["tables"]}: {r["entry"]} | {r["session"]} | '
                         f'`{today(r["command"])}` | {r["test_top1"]:.2f} | {r["test_top5"]:.2f} | {r["run_test_top1"]:.2f} |')
    return '\n'.join(lines) + '\n'


def release_order(rows):
    """The releases with the most training steps first (stable: within a length, the order they were made)."""
    return sorted(rows, key=lambda r: -r['steps'])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='quick', choices=sorted(experiments.PRESETS))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--runs-dir', default=os.path.join('runs', 'reproduce'))
    args = p.parse_args(argv)
    os.chdir(REPO)
    earlier, others = {}, []
    if os.path.exists(MANIFEST):  # rows whose run directory is gone (another session or machine) are kept
        with open(MANIFEST) as f:
            m = json.load(f)
        for r in m['checkpoints']:
            if not os.path.exists(os.path.join(OUT, r['file'])):
                continue
            r.setdefault('steps', experiments.schedule(r['preset'])['steps'])
            if r['entry'] in experiments.ENTRIES:  # the map to the study's sessions may be corrected later
                r['session'] = experiments.ENTRIES[r['entry']].session
            if (r['preset'], r['seed']) == (args.preset, args.seed):
                earlier[r['entry']] = r
            else:
                others.append(r)  # other releases (presets or seeds) stay as they are
    rows = []
    for entry, e in experiments.ENTRIES.items():
        script, session = e.script, e.session
        if not experiments.in_setup(entry, args.preset):
            continue
        out = experiments.run_dir(args.runs_dir, args.preset, entry, args.seed)
        info = runner.run_state(out)
        if not runner.is_done(out, experiments.command(entry, args.seed, args.preset, 'auto', args.runs_dir)):
            if entry in earlier:
                rows.append(earlier[entry])
                print(f'keep {earlier[entry]["file"]}: released earlier, no run directory here')
            else:
                print(f'skip {entry}: no finished run in {out}')
            continue
        tmp = os.path.join(OUT, f'.{entry}.tmp')
        ckpt = slim(os.path.join(out, 'best.pt'))
        torch.save(ckpt, tmp)
        digest = sha256(tmp)
        name = f'{entry}-{args.preset}-s{args.seed}-{digest[:8]}.pt'
        os.replace(tmp, os.path.join(OUT, name))
        top1, top5, output = evaluate_file(os.path.join(OUT, name), script)
        if top1 is None:
            print(f'error: --evaluate of {name} failed: {output}', file=sys.stderr)
            return 1
        tables = ', '.join(f'table {t}' for t, table in experiments.TABLES.items() if entry in table.entries)
        rows.append({'file': name, 'sha256': digest, 'entry': entry, 'tables': tables, 'session': session,
                     'method': script, 'command': info['command'], 'preset': args.preset, 'seed': args.seed,
                     'steps': info['steps'], 'hardware': info.get('hardware', '?'),
                     'test_top1': top1, 'test_top5': top5, 'run_test_top1': ckpt['metrics']['test_top1'],
                     'run_test_top5': ckpt['metrics']['test_top5'], 'best_step': ckpt['metrics']['step']})
        print(f'{name}: test top-1 {top1:.2f} top-5 {top5:.2f} (run: {ckpt["metrics"]["test_top1"]:.2f})', flush=True)
    released = release_order(others + rows)
    keep = {r['file'] for r in released}
    for f in os.listdir(OUT):
        if f.endswith('.pt') and f not in keep:
            os.remove(os.path.join(OUT, f))
    with open(MANIFEST, 'w') as f:
        json.dump({'checkpoints': released}, f, indent=1)
    with open(os.path.join(OUT, 'README.md'), 'w') as f:
        f.write(readme(released))
    print(f'released {len(rows)} checkpoints of preset {args.preset}, seed {args.seed} into {OUT} '
          f'({len(released)} in the manifest)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
