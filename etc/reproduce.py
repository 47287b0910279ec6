"""Reproduce the paper's tables on the public stand-in (Fashion-MNIST, WRN-28-2): run every entry of a table with
the three training scripts (as subprocesses, with the flags etc/experiments.py gives each entry), then collect each
run's log.jsonl into etc/results/<preset>/table{1,2,3}.md.

    python etc/reproduce.py --table all --seeds 1 --preset quick --jobs 2   # pipeline check, ~2 h on 2 CPU cores
    python etc/reproduce.py --table 2 --entries labeled-only,mixmatch,adaptive-ce-1 --seeds 3 --preset medium \
        --jobs 2                                                             # the headline comparison
    python etc/reproduce.py --table all --seeds 3 --preset full --device cuda
    python etc/reproduce.py --table all --seeds 3 --preset quick --report --readme   # tables from finished runs

Seed i runs every entry with `--seed i --split-seed i`: the same labeled images and the same initialization,
so the entries of one seed are paired. Runs go to runs/reproduce/<preset>/<entry>/s<i>; an interrupted call
continues where it stopped (finished runs are skipped, unfinished ones resume from their checkpoint).

Presets set the length and scale the schedule flags with --steps by one rule for every method:
    --eval-every = steps / evals,  --acc-window = steps / 300 (the original's epoch; steps / evals in the v1 and
    v2 presets),  MixMatch's --rampup STEPS = steps * 19 / 300 (the original's 19 of 300 epochs; steps / 4 in v1)
The test set is measured when val top-1 improves and at the end (the tables' test top-1 at best val); the full
preset measures it at every evaluation for the median of the last 20 (--test-when every-eval). Before it
starts, a call prints its plan: runs to do, runs reused, and hours estimated from earlier runs here. A table
keeps one precision: a call stops if its runs so far trained at another precision than this machine's
--amp auto would give (bf16 runs are not continued in fp32 on a CPU without bf16 kernels); --amp chooses.
"""
import argparse
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiments import ENTRIES, PRESETS, TABLES, command, in_setup, run_dir, schedule  # noqa: E402
from report import preset_summary, table_rows, write_readme, write_table  # noqa: E402
from runner import (REPO, UsageError, archive, archive_dir, finished_dir, hardware, read_log, run_all,  # noqa: E402
                  run_state, seeds_found, summarize, train_device)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--table', default='all', choices=(*TABLES, 'all'),
                   help='which paper table (1-3), the policy table (P), or all of them')
    p.add_argument('--seeds', type=int, default=1, help='number of seeds: first-seed .. first-seed + N - 1')
    p.add_argument('--first-seed', type=int, default=0, help='the first seed (to add seeds to an earlier call)')
    p.add_argument('--preset', default='quick', choices=sorted(PRESETS),
                   help=', '.join(f'{k}: {v["steps"]} steps, {v["evals"]} evaluations' for k, v in PRESETS.items()))
    p.add_argument('--entries', default=None,
                   help=f'comma-separated subset of the tables\' entries to run ({", ".join(ENTRIES)})')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='passed to the training scripts')
    p.add_argument('--amp', default='auto', choices=('auto', 'bf16', 'fp16', 'off'),
                   help='passed to the training scripts; auto: what they decide here (one precision per table)')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs at a time; on the CPU each gets cores/jobs threads, and the last runs share the cores '
                        'the finished ones leave (2 on a 2-core CPU: ~8%% more throughput than 1, with each run half '
                        'as fast)')
    p.add_argument('--runs-dir', default=os.path.join('runs', 'reproduce'),
                   help='where the runs go (relative paths: to the repository)')
    p.add_argument('--results-dir', default=os.path.join('etc', 'results'),
                   help='where the tables and copied logs go (relative paths: to the repository)')
    p.add_argument('--report', action='store_true', help='only write the tables from the runs that finished')
    p.add_argument('--readme', action='store_true',
                   help='also fill README.md\'s results table from the finished runs of every preset')
    p.add_argument('--dry-run', action='store_true', help='print the commands and exit')
    args = p.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.first_seed < 0:
        raise UsageError('--seeds and --jobs must be at least 1, --first-seed at least 0')
    tables = list(TABLES) if args.table == 'all' else [args.table]
    entries = [e for t in tables for e in TABLES[t].entries if in_setup(e, args.preset)]
    if args.entries:
        wanted = args.entries.split(',')
        unknown = [e for e in wanted if e not in entries]
        if unknown:
            raise UsageError(f'--entries: {", ".join(unknown)} not in table(s) {", ".join(tables)} '
                             f'(choose from {", ".join(dict.fromkeys(entries))})')
        entries = [e for e in entries if e in wanted]
    args.tables, args.entries = tables, list(dict.fromkeys(entries))
    return args


def earlier_runs(args):
    """(entry, script, steps, wall_s, setup) of the finished runs on this kind of machine, under --runs-dir or
    archived, of any preset."""
    import glob
    found, here = [], hardware(train_device(args.device))
    for root in (args.runs_dir, os.path.join(args.results_dir, 'logs')):
        for path in glob.glob(os.path.join(root, '*', '*', 's*', 'reproduce.json')):
            info = run_state(os.path.dirname(path))
            preset = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))
            if info.get('done') and info.get('hardware') == here and info.get('wall_s') and preset in PRESETS:
                found.append((info['entry'], os.path.dirname(info['command'].split()[1]), info['steps'], info['wall_s'],
                              PRESETS[preset]['setup']))
    return found


def machine_precision(device, amp):
    """The precision the scripts train at on this machine: --amp as given, or what their --amp auto decides."""
    if amp != 'auto':
        return amp
    sys.path.insert(0, os.path.join(REPO, 'adaptive'))
    from runtime import bf16_unusable
    return 'off' if bf16_unusable(train_device(device)) else 'bf16'


def check_precision(pairs, args):
    """One table, one precision: the runs of this call that finished or started elsewhere must have trained at
    the precision this machine would use, or the call stops (--amp chooses it explicitly)."""
    here = machine_precision(args.device, args.amp)
    seen = {}
    for entry, seed in pairs:
        for out in (run_dir(args.runs_dir, args.preset, entry, seed), archive_dir(args, entry, seed)):
            amps = {r.get('amp') for r in read_log(os.path.join(out, 'log.jsonl'))} - {None}
            if amps:
                seen.setdefault(tuple(sorted(amps)), []).append(f'{entry} s{seed}')
                break
    other = {a: runs for a, runs in seen.items() if a != (here,)}
    if other:
        amps, runs = next(iter(other.items()))
        raise UsageError(f'{", ".join(runs[:3])}{" ..." if len(runs) > 3 else ""} trained at --amp {"/".join(amps)}, '
                         f'this machine would train at {here}: pass --amp {amps[0]} to keep the table at one '
                         'precision, or another --runs-dir and --results-dir for a new one')
    return here


def steps_kept(args, entry, seed):
    """The steps an unfinished run keeps when it resumes: its checkpoint's, the last evaluation it logged."""
    out = run_dir(args.runs_dir, args.preset, entry, seed)
    if not os.path.exists(os.path.join(out, 'checkpoint.pt')):
        return 0
    records = read_log(os.path.join(out, 'log.jsonl'))
    return records[-1]['step'] if records else 0


def plan(pairs, todo, args):
    """What a call will do, printed before it starts: runs to do, runs reused, and hours estimated from the
    earlier runs of the same entry (else of the same script) on this kind of machine, scaled by the steps left
    (a run that resumes from its checkpoint counts only the steps after it)."""
    earlier, steps = earlier_runs(args), schedule(args.preset)['steps']
    total, unknown, resumed = 0.0, [], []
    setup = PRESETS[args.preset]['setup']  # the same setup first: the v1 runs evaluated more often
    for entry, seed in todo:
        kept = min(steps_kept(args, entry, seed), steps)
        if kept:
            resumed.append(f'{entry} s{seed} from step {kept}')
        script = ENTRIES[entry].script
        same = next((found for found in (
            [w * steps / s for e, _, s, w, st in earlier if e == entry and st == setup],
            [w * steps / s for _, sc, s, w, st in earlier if sc == script and st == setup],
            [w * steps / s for e, _, s, w, _ in earlier if e == entry],
            [w * steps / s for _, sc, s, w, _ in earlier if sc == script]) if found), None)
        if same:
            total += statistics.median(same) * (steps - kept) / steps
        else:
            unknown.append(entry)
    reused = [p for p in pairs if p not in todo]
    name = lambda ps: ', '.join(f'{e} s{s}' for e, s in ps) or 'none'
    hours = (f'about {total / 3600:.1f} h of run time, {total / 3600 / min(args.jobs, max(len(todo), 1)):.1f} h '
             f'of wall time at --jobs {args.jobs}' if todo else 'nothing to run')
    print(f'plan: {len(todo)} of {len(pairs)} runs to do ({name(todo)}); reused, finished with the same command: '
          f'{name(reused)}. Estimate on {hardware(train_device(args.device))}: {hours}'
          + (f' (no earlier run here of {", ".join(dict.fromkeys(unknown))}: not counted)' if unknown else '')
          + (f'; resuming: {", ".join(resumed)}' if resumed else '') + '.', flush=True)


def main(args):
    os.chdir(REPO)  # the training scripts run from the repository: relative paths are relative to it
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    # seed-major, the longest runs first within a seed, so that seed 0 of every entry finishes first
    pairs = [(e, s) for s in seeds for e in sorted(args.entries, key=lambda e: ENTRIES[e].labeled_only)]
    if args.dry_run:
        plan(pairs, [(e, s) for e, s in pairs if not finished_dir(args, e, s)], args)
        for e, s in pairs:
            print('python ' + ' '.join(map(shlex.quote, command(e, s, args.preset, args.device, args.runs_dir,
                                                                args.amp))))
        return 0
    failed = []
    if not args.report:
        todo = [(e, s) for e, s in pairs if not finished_dir(args, e, s)]
        precision = check_precision(pairs, args)
        plan(pairs, todo, args)
        print(f'precision: {precision} (every run of this call)', flush=True)
        t0 = time.time()
        failed = run_all(todo, args)
        print(f'wall time {(time.time() - t0) / 3600:.2f} h', flush=True)
    archive([p for p in pairs if finished_dir(args, *p) == run_dir(args.runs_dir, args.preset, *p)], args)
    # every table and the summary list the seeds asked for and every seed finished by earlier calls, so that a
    # call adding one seed of some entries (or one table) does not hide the other runs of the preset
    seeds = sorted(set(seeds) | seeds_found(args))
    all_results = {}
    for t in TABLES:  # entries not run (or not finished) say so
        for e, _ in table_rows(t, args.preset)[1]:
            for s in seeds:
                out = finished_dir(args, e, s)
                r = out and summarize(out)
                if r:
                    all_results[(e, s)] = r
    for t in TABLES:  # the tables asked for, and every other one with a finished run (the summary links them)
        if t in args.tables or any(all_results.get((e, s)) for e, _ in table_rows(t, args.preset)[1] for s in seeds):
            print(f'wrote {write_table(t, seeds, args, all_results)}')
    summary = os.path.join(args.results_dir, args.preset, 'README.md')
    with open(summary, 'w') as f:
        f.write(preset_summary(args, seeds, all_results))
    print(f'wrote {summary}')
    if args.readme:
        print(f'wrote {write_readme(args, seeds)}')
    if failed:
        print(f'error: {len(failed)} run(s) failed: ' + ', '.join(f'{e} seed {s}' for e, s in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(get_args()))
    except UsageError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
