"""`canctr train --nproc N ...`: re-run the same command line under torchrun (torch.distributed.run).

Standard library only. The workers get the same argument list without the launcher options below (torchrun would take an
abbreviation such as --nproc for its own); under torchrun (WORLD_SIZE etc. set) `canctr train` trains as its
rank (canctr/train/distributed.py). Only torchrun's options are built here, so the printed
`torchrun ... -m canctr train ...` line, run by hand on each machine, is the same job.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

LAUNCH_OPTIONS = ("nnodes", "node_rank", "rdzv_endpoint", "master_addr", "master_port", "max_restarts")
_FLAGS = ("--nproc", *("--" + o.replace("_", "-") for o in LAUNCH_OPTIONS))  # each takes one value


def worker_argv(argv: list[str]) -> list[str]:
    """`argv` without the launcher options (and their values), abbreviations as argparse accepts them."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if len(name) > 2 and name.startswith("--") and any(f.startswith(name) for f in _FLAGS):
            skip = "=" not in tok
            continue
        out.append(tok)
    return out


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data-parallel launch (see docs/distributed.md)")
    g.add_argument("--nproc", type=int, default=None,
                   help="processes on this machine (one per GPU on CUDA): re-run this command under torchrun")
    g.add_argument("--nnodes", type=int, default=None, help="machines in the job (torchrun --nnodes; default 1)")
    g.add_argument("--node-rank", type=int, default=None, help="this machine's rank (torchrun --node-rank)")
    g.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                   help="c10d rendezvous endpoint shared by all machines (torchrun --rdzv-endpoint)")
    g.add_argument("--master-addr", default=None, help="static rendezvous: rank 0's address (torchrun --master-addr)")
    g.add_argument("--master-port", type=int, default=None, help="static rendezvous: rank 0's port")
    g.add_argument("--max-restarts", type=int, default=None,
                   help="restart the whole group this many times after a failure; restarts resume (torchrun)")


def torchrun_command(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The torchrun command line for `canctr train --nproc N ...` (argv: the full `train ...` arguments)."""
    given = [o for o in LAUNCH_OPTIONS if getattr(args, o) is not None]
    if args.nproc is None:
        raise ValueError(f"--{given[0].replace('_', '-')} needs --nproc (or pass it to torchrun itself)")
    nnodes = 1 if args.nnodes is None else args.nnodes
    for name, value, low in (("--nproc", args.nproc, 1), ("--nnodes", nnodes, 1),
                             ("--max-restarts", args.max_restarts or 0, 0), ("--node-rank", args.node_rank or 0, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    world = args.nproc * nnodes
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is the global batch and must be divisible by "
                         f"--nproc x --nnodes = {world}")
    if args.node_rank is not None and args.node_rank >= nnodes:
        raise ValueError(f"--node-rank {args.node_rank} must be < --nnodes {nnodes}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", f"--nnodes={nnodes}",
           f"--max-restarts={args.max_restarts or 0}"]
    if args.rdzv_endpoint:  # c10d rendezvous: the same endpoint on every machine; node ranks come from it
        if args.master_addr or args.master_port:
            raise ValueError("pass either --rdzv-endpoint or --master-addr/--master-port, not both")
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}"]
        if args.node_rank is not None:
            cmd.append(f"--node-rank={args.node_rank}")
    elif args.master_addr or args.master_port or nnodes > 1:  # static rendezvous at rank 0's address
        if not args.master_addr or args.node_rank is None:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT, or --master-addr with --node-rank "
                             "(and --master-port)")
        cmd += [f"--master-addr={args.master_addr}", f"--master-port={args.master_port or 29500}",
                f"--node-rank={args.node_rank}"]
    else:  # one machine: torchrun picks a free port
        cmd.append("--standalone")
    return [*cmd, "-m", "canctr", *worker_argv(argv)]


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the job under torchrun in the foreground; its exit status is ours."""
    cmd = torchrun_command(args, argv)
    print("canctr train: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd)
