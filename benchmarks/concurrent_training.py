"""Two trainings at once on one machine: each one's samples/s against the same training run alone.

For every configuration: one training alone, then two started together. Each training is a fresh process
that loads the data, warms up, says it is ready and waits; the parent starts all of a round's trainings at
the same moment and each trains for the same wall-clock time, so the pair overlaps throughout. Rounds
alternate solo and pair; the table reports medians.

Configurations (each process sets its threads as the CLI does, with `canctr.threads.set_threads`; the
wait-policy variables are in its environment from the start, before torch loads libgomp):
    default       threads from the available cores (2 here, as torch's own default was), libgomp's default
                  wait policy (spin ~300,000 iterations, then sleep): the old and the new default here
    threads1      --threads 1: what `canctr reproduce --jobs 2` gives each cell on 2 cores
    spin1k        GOMP_SPINCOUNT=1000 (2 threads)
    spin3k        GOMP_SPINCOUNT=3000 (2 threads)
    passive       OMP_WAIT_POLICY=PASSIVE (2 threads): sleep at once
    passive_late  OMP_WAIT_POLICY=PASSIVE set in os.environ after `import torch`: does it still act?

    python benchmarks/concurrent_training.py --data data/beauty --model can-dnn --batch-size 128 --seconds 10 \
        --rounds 2 --configs default threads1 spin1k passive passive_late \
        --out benchmarks/results/concurrent_training_cpu
    python benchmarks/concurrent_training.py --data data/beauty --model can-dnn --seconds 10 --rounds 4 \
        --solo-ab --configs default spin1k threads1 --out benchmarks/results/concurrent_training_solo_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name: (environment at start, --threads)
    "default": ({}, None),
    "threads1": ({}, 1),
    "spin1k": ({"GOMP_SPINCOUNT": "1000"}, None),
    "spin3k": ({"GOMP_SPINCOUNT": "3000"}, None),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "passive_late": ({"CANCTR_LATE_WAIT_POLICY": "PASSIVE"}, None),
}
# variables a configuration decides; removed from the inherited environment first
_OWNED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "CANCTR_LATE_WAIT_POLICY")


def worker(data: str, model_name: str, batch_size: int, threads: int | None, seconds: float) -> None:
    import torch

    from canctr.threads import set_threads

    if os.environ.get("CANCTR_LATE_WAIT_POLICY"):  # libgomp was loaded with torch above
        os.environ["OMP_WAIT_POLICY"] = os.environ["CANCTR_LATE_WAIT_POLICY"]

    from canctr.bench import cycled, timed_steps
    from canctr.data.batch import BatchLoader, load_split
    from canctr.data.schema import Schema
    from canctr.memory import keep_freed_memory
    from canctr.models import create_model
    from canctr.models.base import negative_groups
    from canctr.train.loop import train_step
    from canctr.train.optim import make_optimizer

    n_threads = set_threads(threads)
    keep_freed_memory()
    schema = Schema.load(data)
    torch.manual_seed(0)
    model = create_model(model_name, schema)
    opt = make_optimizer(model, 1e-3)
    loader = BatchLoader(load_split(data, "train", schema.spec), schema.spec, batch_size=batch_size, shuffle=True,
                         seed=0, max_len=100, bucket=20, drop_last=True, negatives=negative_groups(model))
    batches = cycled(loader)
    timed_steps(model, batches, opt, 30)  # warm-up
    print("ready", flush=True)
    sys.stdin.readline()  # the parent's start signal
    steps, t0 = 0, time.perf_counter()
    cpu0 = time.process_time()
    while time.perf_counter() - t0 < seconds:
        train_step(model, next(batches), opt)
        steps += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"samples_per_second": steps * batch_size / wall, "steps": steps, "seconds": wall,
                      "cpu_seconds": cpu, "threads": n_threads, "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                      "spincount": os.environ.get("GOMP_SPINCOUNT")}), flush=True)


def _busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores; /proc/stat), or NaN off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def launch(args: argparse.Namespace, config: str, n: int) -> list[dict]:
    """n trainings of `config` started at the same moment; their results."""
    extra, threads = CONFIGS[config]
    env = {k: v for k, v in os.environ.items() if k not in _OWNED} | extra
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                      env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--worker", "--data", args.data, "--model", args.model,
           "--batch-size", str(args.batch_size), "--seconds", str(args.seconds)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"{config}: a training did not start (exit {p.wait()})")
    busy0, t0 = _busy_seconds(), time.perf_counter()
    for p in procs:  # go, all together
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        result, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"{config}: a training failed (exit {p.returncode})")
        out.append(json.loads(result.strip().splitlines()[-1]))
    # other processes' load during the window, in cores: the machine's busy time less the trainings' own
    other = (_busy_seconds() - busy0 - sum(x["cpu_seconds"] for x in out)) / (time.perf_counter() - t0)
    for x in out:
        x["other_load_cores"] = round(max(0.0, other), 2)
    return out


def machine() -> str:
    import torch

    from canctr.env import cpu_model
    from canctr.threads import available_cores

    return f"{cpu_model()}, {os.cpu_count()} cores ({available_cores()} available), torch {torch.__version__}"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return sha + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def to_markdown(r: dict) -> str:
    lines = ["# Two trainings at once on one machine", "", f"Command: `{r['command']}`  ", f"Date: {r['date']}  ",
             f"Commit: {r['commit']}  ", f"Machine: {r['machine']}  ",
             f"Training: {r['model']} on {r['dataset']}, batch {r['batch_size']}, {r['seconds']:g} s timed per "
             f"training after 30 warm-up steps; median of {r['rounds']} rounds", "",
             f"Target: two at once, each keeping >= {r['target']:.0%} of its solo samples/s.", "",
             "| configuration | threads each | solo samples/s | pair samples/s (each) | each / solo | "
             "pair total / solo | CPU s per sample, pair / solo | other load, cores (max) | meets target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in r["configs"]:
        lines.append(
            f"| {c['config']} | {c['threads']} | {c['solo']:,.0f} | {c['pair'][0]:,.0f} and {c['pair'][1]:,.0f} | "
            f"{c['ratios'][0]:.0%} and {c['ratios'][1]:.0%} | {sum(c['pair']) / c['solo']:.2f} | "
            f"{c['cpu_per_sample_ratio']:.2f} | {c['other_load_max']:.2f} | "
            f"{'yes' if min(c['ratios']) >= r['target'] else 'no'} |")
    base = next((c for c in r["configs"] if c["config"] == "default"), r["configs"][0])
    meets = [c for c in r["configs"] if min(c["ratios"]) >= r["target"]]
    lines += ["", "Meets the target: " + (", ".join(
        f"{c['config']} (solo {c['solo'] / base['solo'] - 1:+.0%} against {base['config']}'s solo)"
        for c in meets) or "none") + ".", "", "Configurations:", ""]
    legend = __doc__.split("before torch loads libgomp):")[1].split("\n\n")[0].strip("\n").splitlines()
    shown, keep = [], False
    for line in legend:  # the legend of the configurations in this run
        if not line.startswith(" " * 18):
            keep = line.split()[0] in {c["config"] for c in r["configs"]}
            line = "* " + line.strip()
        if keep:
            shown.append(line if line.startswith("*") else "  " + line.strip())
    lines += shown
    return "\n".join(lines) + "\n"


def solo_ab(args: argparse.Namespace) -> None:
    """Solo samples/s of each configuration, interleaved round by round; medians and each round's numbers."""
    runs: dict[str, list[float]] = {c: [] for c in args.configs}
    for _ in range(args.rounds):
        for config in args.configs:
            runs[config].append(launch(args, config, 1)[0]["samples_per_second"])
    base = statistics.median(runs[args.configs[0]])
    lines = ["# Solo samples/s by configuration, interleaved rounds", "",
             f"Command: `{' '.join(['python', 'benchmarks/concurrent_training.py', *sys.argv[1:]])}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ", f"Commit: {commit()}  ",
             f"Machine: {machine()}  ", f"Training: {args.model}, batch {args.batch_size}, {args.seconds:g} s each", "",
             f"| configuration | median samples/s | vs {args.configs[0]} | rounds |", "|---|---|---|---|"]
    for config, xs in runs.items():
        med = statistics.median(xs)
        lines.append(f"| {config} | {med:,.0f} | {med / base - 1:+.1%} | {', '.join(f'{x:,.0f}' for x in xs)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(runs, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="can-dnn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="results file stem (.json and .md)")
    p.add_argument("--solo-ab", action="store_true",
                   help="solo trainings only, the configurations in turn each round (drift hits all alike)")
    p.add_argument("--render", default=None, metavar="JSON", help="only rewrite the .md of a recorded .json")
    args = p.parse_args()
    if args.worker:
        worker(args.data, args.model, args.batch_size, args.threads, args.seconds)
        return
    if args.solo_ab:
        return solo_ab(args)
    if args.render:
        r = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(to_markdown(r))
        return
    from canctr.data.schema import Schema

    configs = []
    for config in args.configs:
        solos, pairs = [], []
        for _ in range(args.rounds):
            solos += launch(args, config, 1)
            pairs.append(launch(args, config, 2))
        solo = statistics.median(s["samples_per_second"] for s in solos)
        pair = [statistics.median(sorted(x["samples_per_second"] for x in pr)[i] for pr in pairs) for i in (1, 0)]
        cpu = [x["cpu_seconds"] / (x["samples_per_second"] * x["seconds"]) for pr in pairs for x in pr]
        cpu_solo = [s["cpu_seconds"] / (s["samples_per_second"] * s["seconds"]) for s in solos]
        c = {"config": config, "threads": solos[0]["threads"], "wait_policy": solos[0]["wait_policy"],
             "spincount": solos[0]["spincount"], "solo": solo, "pair": pair,
             "ratios": [x / solo for x in pair],
             "other_load_max": max(x["other_load_cores"] for x in solos + [y for pr in pairs for y in pr]),
             "cpu_per_sample_ratio": statistics.median(cpu) /
             statistics.median(cpu_solo), "runs": {"solo": solos, "pair": pairs}}
        print(f"{config:<9} threads {c['threads']}: solo {solo:,.0f}  pair {pair[0]:,.0f} / {pair[1]:,.0f}  "
              f"({c['ratios'][0]:.0%} / {c['ratios'][1]:.0%})", flush=True)
        configs.append(c)
    argv = [a.replace(str(Path.cwd()) + os.sep, "") for a in sys.argv[1:]]
    r = {"command": " ".join(["python", "benchmarks/concurrent_training.py", *argv]),
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(), "machine": machine(),
         "model": args.model, "dataset": Schema.load(args.data).dataset, "batch_size": args.batch_size,
         "seconds": args.seconds, "rounds": args.rounds, "target": 0.4, "configs": configs}
    if args.out:
        from canctr.bench import write_results

        write_results(args.out, r, to_markdown(r))
        print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
