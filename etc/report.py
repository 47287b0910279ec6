"""The report of etc/reproduce.py: each preset's tables (etc/results/<preset>/table*.md), its summary
(README.md there) and the README's results block, from the finished runs; paired differences with their
intervals. Every table's prose is in this file."""
import argparse
import json
import os
import re
import statistics

from experiments import (ENTRIES, HEADLINE, LABELS, M75, PRESETS, TABLES, describe, faithful, in_setup, method_command,
                         schedule)
from runner import REPO, UsageError, finished_dir, summarize


P_NOTE = (' Unlabeled guessed / step: K augmentations of each are labeled by the model; ensure-ratio draws and '
          'guesses further batches. ms / step: median over evaluation windows of the training step alone (the '
          'accuracy policies add a forward pass of the clean labeled batch), as the run measured it: runs that '
          'shared the machine with other work were slowed by it, unequally, so this column does not rank the '
          'policies\' cost; etc/speed.md times their steps alone.')

ONE_SEED = 'one seed: not evidence'  # beside n wherever a mean has a single run behind it
BASE_NAMES = {M75: 'MixMatch λu 75', HEADLINE: 'adaptive CE'}  # columns of paired differences after MixMatch
FMNIST_TRAIN, BATCH = 60000, 64  # the tables' data and batch size: how often a preset sees the unlabeled set


def epochs_note(preset):
    """How many times the preset's steps see Fashion-MNIST's unlabeled images (LABELS labeled), and what that means
    for a table that compares policies."""
    s = schedule(preset)
    passes = s['steps'] * BATCH / (FMNIST_TRAIN - s['n_val'] - LABELS)
    if passes < 2:
        return (f' At {s["steps"]:,} steps the unlabeled set is seen about once: the table ranks early progress, '
                'not where the policies end.')
    return f' At {s["steps"]:,} steps the unlabeled set is seen about {passes:.0f} times.'

S_NOTE = (' Images / step: labeled and unlabeled images drawn per step (labeled-only: the labeled ones alone); '
          'FixMatch forwards each unlabeled image twice (weak, strong) with gradient, MixMatch K = 2 times without '
          'and K times mixed with. ms / step: median over evaluation windows of the training step alone. Each '
          'system keeps its paper\'s own settings (FixMatch: SGD, cosine decay; the others: AdamW), so a row '
          'compares systems, not one changed part.')


def mean_std(values, digits=2, signed=False):
    """Mean ± sample standard deviation (n - 1); signed: differences carry their sign (+0.07, −1.46)."""
    values = [v for v in values if v is not None]
    if not values:
        return '—'
    if len(values) == 1:
        return signed_number(values[0], digits) if signed else f'{values[0]:.{digits}f}'
    mean = signed_number(statistics.mean(values), digits) if signed else f'{statistics.mean(values):.{digits}f}'
    return f'{mean} ± {statistics.stdev(values):.{digits}f}'


def signed_number(x, digits=2):
    """+0.07 or −1.46, with the typographic minus sign (U+2212) that the README's tables use."""
    return f'{x:+.{digits}f}'.replace('-', '\u2212')


def table_path(args, table):
    """One file per preset and table: a medium or full run never overwrites the quick tables."""
    return os.path.join(args.results_dir, args.preset, f'table{table}.md')


def table_rows(table, preset):
    """(title, [(entry, paper top-1)]) of a table, with the entries the preset's setup has."""
    t = TABLES[table]
    return t.title, [(e, ENTRIES[e].paper) for e in t.entries if in_setup(e, preset)]


def table_columns(table, seeds, results, rows):
    """(header, cell(finished runs of an entry)) of a table's columns after entry, session, paper and n. The
    median of the last evaluations only where every run measured the test set at every evaluation; the
    policy table adds the cost of a step."""
    done = [results[(e, s)] for e, _ in rows for s in seeds if results.get((e, s))]
    cols = [('test top-1 @ best val', lambda d: mean_std([r['best_top1'] for r in d])),
            ('top-5 @ best val', lambda d: mean_std([r['best_top5'] for r in d]))]
    if done and all(r['tested_every'] for r in done):
        cols += [('test top-1, median of last evals', lambda d: f'{mean_std([r["median_top1"] for r in d])} '
                                                                f'(last {min(r["median_n"] for r in d)})'),
                 ('top-5, median', lambda d: mean_std([r['median_top5'] for r in d]))]
    cols += [('mask ratio (end)', lambda d: mean_std([r['mask_ratio'] for r in d], 3)),
             ('pseudo-label acc (end)', lambda d: mean_std([r['pl_acc'] for r in d], 1))]
    if table == 'P':
        cols += [('unlabeled guessed / step', lambda d: mean_std([r['guessed'] for r in d], 0)),
                 ('ms / step', lambda d: mean_std([r['ms_per_step'] for r in d], 0))]
    if table == 'S':
        cols += [('images / step (labeled + unlabeled)', lambda d: str(d[0]['images'])),
                 ('ms / step', lambda d: mean_std([r['ms_per_step'] for r in d], 0))]
    cols += [('steps', lambda d: str(d[0]['steps'])),
             ('wall / run', lambda d: f'{mean_std([r["wall_s"] / 60 for r in d], 0)} min')]
    return [('entry', None), ('session', None), ('paper top-1 (NAVER)', None), ('n', None)] + cols


def write_table(table, seeds, args, results):
    title, rows = table_rows(table, args.preset)
    s = schedule(args.preset)
    columns = table_columns(table, seeds, results, rows)
    lines = [f'# {title}', '',
             f'Preset `{args.preset}`: {s["steps"]} steps, an evaluation every {s["eval_every"]} steps '
             f'({s["evals"]} in all), `--acc-window {s["acc_window"]}`, MixMatch `{" ".join(s["rampup"])}`, '
             f'`--n-val {s["n_val"]}`; seeds {", ".join(map(str, seeds))} (asked, or run by an earlier call; '
             '`--seed i --split-seed i`), n per row finished. Fashion-MNIST, WRN-28-2, test set of 10,000 images, '
             'fp32 evaluation of the EMA weights. '
             'Mean ± sample standard deviation (n − 1) over seeds. Median (only where the test set was measured at '
             'every evaluation, `--test-when every-eval`): over the last 20 evaluations, or all of them when the '
             'preset has fewer.' + {'P': P_NOTE + epochs_note(args.preset), 'S': S_NOTE}.get(table, ''), '',
             f'Collected by `python etc/reproduce.py --table {table} --seeds {len(seeds)}'
             f'{"" if seeds[0] == 0 else f" --first-seed {seeds[0]}"} --preset {args.preset} --report` from the '
             f'runs that finished, here or archived in etc/results/logs/{args.preset} (runs of several calls '
             'or machines add up); the exact command of every run is below.', '',
             '| ' + ' | '.join(h for h, _ in columns) + ' |', '|' + '---|' * len(columns)]
    figure = os.path.join(args.results_dir, 'figures', f'{args.preset}-policies.png')
    if table == 'P' and os.path.exists(figure):  # drawn from the archived logs by etc/plot.py
        lines[-2:-2] = [f'![Mask ratio and pseudo-label accuracy over steps, every policy with logs '
                        f'({args.preset} preset)](../figures/{args.preset}-policies.png)', '',
                        f'The figure: `python etc/plot.py --preset {args.preset}` (mean over the seeds each policy '
                        'has; the table below gives n).', '']
    devices, walls = set(), []
    for entry, paper in rows:
        rs = [results.get((entry, seed)) for seed in seeds]
        done = [r for r in rs if r]
        session, what = ENTRIES[entry].session, describe(entry, args.preset)
        n = f'{len(done)}{f" ({ONE_SEED})" if len(done) == 1 else ""}'
        head = [f'{entry}: {what}', session, str(paper or '—'), n]
        if not done:
            lines.append('| ' + ' | '.join(head + ['not run'] + [''] * (len(columns) - 5)) + ' |')
            continue
        devices |= {f'{r["hardware"]}: {r["device"]}, amp {r["amp"]}' for r in done}
        walls += [r['wall_s'] for r in done]
        lines.append('| ' + ' | '.join(head + [cell(done) for _, cell in columns[4:]]) + ' |')
    lines += ['', '**Paired differences** (same seed, same labeled images and initialization), test top-1 at the '
              'best-val checkpoint: mean ± sample std over seeds, 95% intervals (Student\'s t; a percentile bootstrap '
              f'over seeds, {BOOTSTRAP_RESAMPLES:,} resamples, scipy.stats), and the seeds on which the row leads:', '']
    # MixMatch λu 75 where the table has it; the policy table also sets every policy against the study's method
    extra = [b for b in (M75, HEADLINE) if b in dict(rows) and (b == M75 or table == 'P')]
    bases = [rows[0][0], rows[1][0]] + extra
    lines += ['| entry | − labeled-only | − MixMatch |' + ''.join(f' − {BASE_NAMES[b]} |' for b in extra),
              '|---|' + '---|' * len(bases)]
    for entry, _ in rows[1:]:
        cells = []
        for base in bases:
            if entry == base:
                cells.append('')
                continue
            d = paired(results, entry, base, seeds)
            per_seed = f'; per seed {", ".join(signed_number(x) for x in d)}' if len(d) > 1 else ''
            if not d:
                cells.append('—')
                continue
            st = paired_stats(d)
            intervals = f'; t {interval(st["t"])}, bootstrap {interval(st["bootstrap"])}' if st['t'] else ''
            cells.append(f'{mean_std(d, signed=True)}{intervals} ({st["ahead"]}/{st["n"]} ahead{per_seed})')
        lines.append(f'| {entry} | ' + ' | '.join(cells) + ' |')
    if len(seeds) > 1:  # the numbers the differences come from
        lines += ['', 'Test top-1 at the best-val checkpoint, per seed:', '',
                  '| seed | ' + ' | '.join(e for e, _ in rows) + ' |', '|---|' + '---|' * len(rows)]
        for seed in seeds:
            cells = [f'{results[(e, seed)]["best_top1"]:.2f}' if results.get((e, seed)) else '—' for e, _ in rows]
            lines.append(f'| {seed} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'Hardware: {"; ".join(sorted(devices)) or "—"}. Run time of all runs of this table: '
              f'{sum(walls) / 3600:.2f} h (runs sharing the machine overlap in wall-clock time).', '',
              'Commands:', '']
    for entry, _ in rows:
        for seed in seeds:
            r = results.get((entry, seed))
            if r:
                lines.append(f'    {r["command"]}')
    path = table_path(args, table)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def paired(results, entry, base, seeds):
    """Per-seed differences of test top-1 at the best-val checkpoint, entry minus base."""
    return [results[(entry, s)]['best_top1'] - results[(base, s)]['best_top1'] for s in seeds
            if results.get((entry, s)) and results.get((base, s))]


def preset_summary(args, seeds, results):
    """etc/results/<preset>/README.md: a table per paper table, each entry with its command, top-1/top-5, the
    paired differences and the released checkpoint."""
    released = released_checkpoints()
    s = schedule(args.preset)
    flags = (f'--n-val {s["n_val"]} --steps {s["steps"]} --eval-every {s["eval_every"]} --acc-window '
             f'{s["acc_window"]} --seed i --split-seed i')
    lines = [f'# Preset `{args.preset}`: {s["steps"]} steps', '',
             f'Written by `python etc/reproduce.py --preset {args.preset} --seeds {len(seeds)} --report` from the '
             f'finished runs. {"Seed " + str(seeds[0]) if len(seeds) == 1 else f"Seeds {seeds[0]}–{seeds[-1]}"}'
             f' where run (n per row), on {"; ".join(sorted({r["hardware"] for r in results.values()})) or "—"}. '
             + 'Every command below is seed 0\'s; seed i adds `--seed i --split-seed i`. '
             + (f'`--preset {args.preset}` sets `{flags.replace(" --seed i --split-seed i", "")}` (MixMatch rows: '
                f'`{" ".join(s["rampup"])}`). ' if s['setup'] == 'faithful' else '')
             + (f'`--preset {PRESETS[args.preset].get("base")} --acc-window {s["acc_window"]}` sets `'
                f'{flags.replace(" --seed i --split-seed i", "")}` (MixMatch rows: `{" ".join(s["rampup"])}`): the '
                f'`{PRESETS[args.preset].get("base")}` preset with the window it had before, steps / evaluations. '
                if s['setup'] == 'v2' else '')
             + 'Top-1/top-5: test set, EMA weights '
             'at the best-val evaluation, mean ± sample std (n − 1) over seeds. Δ: paired per-seed difference in '
             'top-1 (row minus column): its mean, 95% intervals (Student\'s t, then a percentile bootstrap over seeds, '
             f'{BOOTSTRAP_RESAMPLES:,} resamples, scipy.stats) and the seeds on which the row leads. Checkpoint: '
             'seed 0\'s, with the numbers its file gives in '
             '[pretrained/README.md](../../../pretrained/README.md).', '']
    for t in TABLES:
        title, rows = table_rows(t, args.preset)
        if not any(results.get((e, sd)) for e, _ in rows for sd in seeds):
            continue  # a table with no finished run of this preset
        lines += [f'**{title}** ([per run](table{t}.md))', '']
        if any(results.get((e, sd)) for e, _ in rows for sd in seeds):
            lines += ['| entry | session | paper top-1 (NAVER) | our command | our top-1 / top-5 (n) | '
                      'Δ vs labeled-only | Δ vs MixMatch |' + (' Δ vs MixMatch λu 75 |' if M75 in dict(rows) else '')
                      + ' checkpoint | sha256 |', '|---|---|---|---|---|---|---|' + ('---|' if M75 in dict(rows) else '')
                      + '---|---|']
        bases = [rows[0][0], rows[1][0]] + ([M75] if M75 in dict(rows) else [])
        missing = []
        for entry, paper in rows:
            done = [results[(entry, sd)] for sd in seeds if results.get((entry, sd))]
            session, what = ENTRIES[entry].session, describe(entry, args.preset)
            if not done:
                missing.append(entry)
                continue
            score = (f'{mean_std([r["best_top1"] for r in done])} / {mean_std([r["best_top5"] for r in done])} '
                     f'({len(done)}{f"; {ONE_SEED}" if len(done) == 1 else ""})')
            deltas = [delta(results, entry, base, seeds, bootstrap=True) for base in bases]
            ck = released.get((entry, args.preset))
            checkpoint = (f'[{ck["file"]}](../../../pretrained/{ck["file"]}) | `{ck["sha256"][:16]}…`' if ck
                          else '— | —')
            lines.append(f'| {what} | {session} | {paper or "—"} | `{method_command(entry, args.preset)}` | {score} | '
                         + ' | '.join(deltas) + f' | {checkpoint} |')
        lines += ['', f'Not run at this preset: {", ".join(missing)}.', ''] if missing else ['']
    lines += window_effect(args, seeds, results)
    return '\n'.join(lines).rstrip() + '\n'


def window_effect(args, seeds, results):
    """Lines of the summary of a faithful preset with a v2 twin: each entry finished at both on the same seeds,
    this preset (the original's train-accuracy window) against the twin (the window before), paired by seed:
    the window's own effect. The entries whose policy does not read the train accuracy must give 0.00."""
    twin = next((p for p, v in PRESETS.items() if v.get('base') == args.preset), None)
    if PRESETS[args.preset]['setup'] != 'faithful' or not twin:
        return []
    a = argparse.Namespace(**{**vars(args), 'preset': twin})
    old = {(e, sd): r for e in ENTRIES for sd in seeds if in_setup(e, twin) and results.get((e, sd))
           and (out := finished_dir(a, e, sd)) and (r := summarize(out))}
    entries = [e for e in ENTRIES if any(old.get((e, sd)) for sd in seeds)]
    if not entries:
        return []
    lines = [f'**The train-accuracy window\'s own effect**: this preset (`--acc-window '
             f'{schedule(args.preset)["acc_window"]}`, the original\'s epoch) against `{twin}` (`--acc-window '
             f'{schedule(twin)["acc_window"]}`, the window before), the same seeds and otherwise the same flags. Δ '
             'window: here minus there, per seed; it is 0.00 where the policy does not read the train accuracy.', '',
             '| entry | top-1 here (n) | top-1 at ' + twin + ' | Δ window | Δ vs MixMatch here | Δ vs MixMatch at '
             + twin + ' |', '|---|---|---|---|---|---|']
    for e in entries:
        pairs = [sd for sd in seeds if old.get((e, sd))]
        base = 'mixmatch' if ENTRIES[e].labels == LABELS else 'mixmatch-few'
        lines.append(f'| {e} | {mean_std([results[(e, sd)]["best_top1"] for sd in pairs])} ({len(pairs)}) | '
                     f'{mean_std([old[(e, sd)]["best_top1"] for sd in pairs])} | '
                     f'{paired_text([results[(e, sd)]["best_top1"] - old[(e, sd)]["best_top1"] for sd in pairs])} | '
                     f'{delta(results, e, base, pairs)} | {delta(old, e, base, pairs)} |')
    return lines + ['']


def released_checkpoints():
    """(entry, preset) -> its manifest row in pretrained/manifest.json."""
    manifest = os.path.join(REPO, 'pretrained', 'manifest.json')
    if not os.path.exists(manifest):
        return {}
    with open(manifest) as f:
        return {(r['entry'], r['preset']): r for r in json.load(f)['checkpoints']}


BOOTSTRAP_RESAMPLES = 10000


def paired_stats(d):
    """The mean of paired differences, its 95% intervals (Student's t; a percentile bootstrap of the mean over
    seeds, 10,000 resamples, seeded: scipy.stats), and on how many seeds the row leads (difference > 0). The
    intervals are None below two seeds."""
    import numpy as np
    from scipy import stats
    d = np.asarray(d, dtype=float)
    out = {'mean': float(d.mean()), 'n': len(d), 'ahead': int((d > 0).sum()), 't': None, 'bootstrap': None}
    if len(d) >= 2:
        half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        out['t'] = (out['mean'] - half, out['mean'] + half)
        if d.std() == 0:  # every seed the same: the resampled means are too
            out['bootstrap'] = (out['mean'], out['mean'])
        else:
            ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                                 method='percentile', rng=np.random.default_rng(0)).confidence_interval
            out['bootstrap'] = (float(ci.low), float(ci.high))
    return out


def interval(bounds):
    return f'[{signed_number(bounds[0])}, {signed_number(bounds[1])}]'


def delta(results, entry, base, seeds, bootstrap=False):
    """The paired differences: mean, 95% interval (t; and the bootstrap's), seeds ahead of n; empty for the base
    itself or without pairs."""
    return paired_text(paired(results, entry, base, seeds) if entry != base else [], bootstrap)


def paired_text(d, bootstrap=False):
    """Per-seed differences as the tables write them: mean [t interval] (seeds ahead / n); empty without any."""
    if not d:
        return ''
    st = paired_stats(d)
    if st['t'] is None:
        return f'{signed_number(st["mean"])} ({st["ahead"]}/{st["n"]} ahead)'
    boot = f', bootstrap {interval(st["bootstrap"])}' if bootstrap else ''
    return f'{signed_number(st["mean"])} {interval(st["t"])}{boot} ({st["ahead"]}/{st["n"]} ahead)'


def readme_block(args, seeds):
    """The README's one results table: every entry of the paper's tables at each length, at the faithful preset
    with the most finished seeds of it (the length's own, or its v2 with the window before; a tie: its own); an
    entry that none has is shown at the first preset that has (its row says which), or as not run, so that no
    entry of the paper's tables is missing. The policy table and the presets not shown are linked below it."""
    released = released_checkpoints()
    lines = ['<!-- results: begin (written by `python etc/reproduce.py --seeds 3 --report --readme`; edit the '
             'script, not this block) -->',
             '| paper entry | session | paper top-1 | our command | ours: test top-1 (n, preset) | Δ vs MixMatch | '
             'Δ vs MixMatch λu 75 | Δ vs labeled-only | checkpoint |', '|---|---|---|---|---|---|---|---|---|']
    paper_tables = {t: v for t, v in TABLES.items() if t.isdigit()}
    entries = list(dict.fromkeys(e for t in paper_tables.values() for e in t.entries))
    papers = {e: ENTRIES[e].paper for e in entries}
    tables = {e: ', '.join(f'T{t}' for t, table in paper_tables.items() if e in table.entries) for e in entries}
    found = {}
    for preset in PRESETS:
        a = argparse.Namespace(**{**vars(args), 'preset': preset})
        found[preset] = {(e, sd): summarize(out) for e in entries for sd in seeds
                         if in_setup(e, preset) and (out := finished_dir(a, e, sd))}
    lengths = {}  # each length's faithful presets with runs: its own first, then its v2 (the window before)
    for p in sorted((p for p in PRESETS if faithful(p) and found[p]), key=lambda p: PRESETS[p]['setup'] != 'faithful'):
        lengths.setdefault(PRESETS[p].get('base', p), []).append(p)
    per_preset = {p: found[p] for ps in lengths.values() for p in ps} or {p: found[p] for p in PRESETS if found[p]}
    hidden = [p for p in PRESETS if found[p] and p not in per_preset]
    for entry in entries:
        labels, session = ENTRIES[entry].labels, ENTRIES[entry].session
        base_lo, base_mm = ('labeled-only', 'mixmatch') if labels == LABELS else ('labeled-only-few', 'mixmatch-few')
        shown = {}
        for ps in (lengths.values() if lengths else [[p] for p in per_preset]):
            n = {p: sum(1 for sd in seeds if found[p].get((entry, sd))) for p in ps}
            best = max(ps, key=n.get)  # the most seeds; on a tie the faithful preset
            if n[best]:
                shown[best] = found[best]
        if not shown:  # at the first preset that has it, else as not run
            shown = {p: found[p] for p in PRESETS if any(found[p].get((entry, sd)) for sd in seeds)}
            shown = dict(list(shown.items())[:1])
        if not shown:
            lines.append(f'| {tables[entry]}: {ENTRIES[entry].what} | {session} | {papers[entry] or "—"} | — | not run '
                         '|  |  |  | — |')
        for preset, results in shown.items():
            done = [results[(entry, sd)] for sd in seeds if results.get((entry, sd))]
            ck = released.get((entry, preset))
            checkpoint = f'[{ck["file"][:-3]}](pretrained/{ck["file"]})' if ck else '—'
            lines.append(f'| {tables[entry]}: {describe(entry, preset)} | {session} | {papers[entry] or "—"} | '
                         f'`{method_command(entry, preset)}` | **{mean_std([r["best_top1"] for r in done])}** '
                         f'({len(done)}, {preset}{f"; {ONE_SEED}" if len(done) == 1 else ""}) | {delta(results, entry, base_mm, seeds)} | '
                         f'{delta(results, entry, M75, seeds) if labels == LABELS else ""} | '
                         f'{delta(results, entry, base_lo, seeds)} | {checkpoint} |')
    links = [f'[{p}](etc/results/{p}/README.md)' for p in hidden]

    def beyond_the_paper(preset, table):  # finished runs of the table's own entries (not only the headline's)
        a = argparse.Namespace(**{**vars(args), 'preset': preset})
        return any(finished_dir(a, e, sd) for e in TABLES[table].entries if e not in entries and in_setup(e, preset)
                   for sd in seeds)
    links += [f'[{name}, {p}](etc/results/{p}/table{t}.md)' for t, name in (('P', 'policy table'),
                                                                           ('S', 'other systems'))
              for p in per_preset if beyond_the_paper(p, t)]
    if links:
        lines += ['', 'Also measured: ' + ', '.join(links) + '.']
    lines.append('<!-- results: end -->')
    return '\n'.join(lines)


def write_readme(args, seeds, path=os.path.join(REPO, 'README.md')):
    with open(path) as f:
        text = f.read()
    m = re.search(r'<!-- results: begin.*?<!-- results: end -->', text, re.S)
    if not m:
        raise UsageError(f'{path} has no "<!-- results: begin" ... "<!-- results: end -->" block to fill')
    with open(path, 'w') as f:
        f.write(text[:m.start()] + readme_block(args, seeds) + text[m.end():])
    return path
