"""Submit a run to Slurm: ``iterdpo slurm submit CONFIG [section.key=value ...] [options]``.

The resolved config is written to ``<run dir>/slurm/config.yaml`` and one sbatch script per
job to ``<run dir>/slurm/*.sbatch`` (kept, so a job can be resubmitted by hand). Jobs:

- default: one job runs ``iterdpo run`` (every iteration);
- ``--iterations-as-jobs``: job k runs iterations 1..k (1..k-1 are finished and skipped),
  chained with ``--dependency=afterok:<job k-1>``, so each iteration gets its own
  allocation (and its own time limit, queue priority and requeue).

Multi-node training: every job runs ``srun`` with one task per node; each task starts
``accelerate launch`` with ``--machine_rank $SLURM_NODEID`` and the job's first node
(``scontrol show hostnames $SLURM_JOB_NODELIST | head -n1``) as rendezvous
(``MASTER_ADDR``; with ``--network-interface IFACE`` that interface's address on the first
node, and ``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``), a port derived from the job id and
free on the first node (:func:`rendezvous_port`), ``--processes-per-node`` processes per node
(default: the GPUs per node). A DeepSpeed config on several nodes runs accelerate's
``standard`` multi-node launcher (torchrun per node; srun already starts one per node).
``launch/slurm/README.md`` says what each task sees and what the 2-node test cluster taught.

Requeue-safe: scripts carry ``#SBATCH --requeue`` and ``--open-mode=append``; a requeued
job (``scontrol requeue``, preemption, node failure) reruns its script, and ``iterdpo run``
resumes from the run directory (finished stages are skipped, a killed stage is redone).

Sampling servers on their own nodes/GPUs: see ``launch/slurm/vllm_servers.sbatch``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmError(RuntimeError):
    """sbatch/scontrol failed, or a job ended in a state other than COMPLETED."""


def add_parser(sub) -> None:
    """Add ``slurm submit`` to the ``iterdpo`` command line."""
    sp = sub.add_parser("slurm", help="submit the run to a Slurm cluster")
    ssub = sp.add_subparsers(dest="slurm_command", required=True)
    p = ssub.add_parser("submit", help="write sbatch scripts for the run and submit them")
    p.add_argument("config", help="YAML config of the run")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override any config field")
    p.add_argument("--iterations-as-jobs", action="store_true", help="one job per iteration, chained with afterok")
    p.add_argument("--nodes", type=int, default=1, help="nodes per job (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    p.add_argument("--processes-per-node", type=int, help="training processes per node (default: GPUs per node, or 1)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs of each node's task")
    p.add_argument("--mem", help="memory per node, e.g. 200G")
    p.add_argument("--time", help="time limit per job, e.g. 12:00:00")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--qos", help="Slurm QOS")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG", help="extra #SBATCH line, e.g. --exclusive (repeatable)")
    p.add_argument("--launcher", choices=["auto", "python", "accelerate"], default="auto",
                   help="how each node starts iterdpo: 'python' (one process, one node) or 'accelerate launch'; "
                   "auto = accelerate when nodes > 1 or processes per node > 1")
    p.add_argument("--accelerate-config", help="accelerate config file (e.g. a DeepSpeed ZeRO config)")
    p.add_argument("--network-interface", metavar="IFACE",
                   help="network interface the processes talk over (e.g. ib0, eth0): the rendezvous address is "
                   "its IPv4 address on the first node, and GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME are set to it "
                   "(default: the first node's hostname, and each library picks its interface)")
    p.add_argument("--setup", action="append", default=[], metavar="CMD", help="shell line run first in each job, e.g. 'source .venv/bin/activate' (repeatable)")
    p.add_argument("--python", default=sys.executable, help="python of the jobs (default: this one)")
    p.add_argument("--after", help="job id the first job waits to complete (afterok), or a dependency such as "
                   "after:ID (start once job ID has started, e.g. a vLLM server pool)")
    p.add_argument("--wait", action="store_true", help="wait for the last job; exit 1 unless it completed")
    p.add_argument("--dry-run", action="store_true", help="write and print the scripts, submit nothing")


def _q(value: str | Path) -> str:
    """Shell-quote for a word inside the double-quoted ``bash -c "..."`` of srun."""
    s = str(value)
    if any(c in s for c in '"$`\\'):
        raise SlurmError(f"{s!r}: paths and overrides must not contain \" $ ` or \\")
    return shlex.quote(s)


def render(args: argparse.Namespace, config_path: Path, log_dir: Path, job_name: str, overrides: list[str]) -> str:
    """The sbatch script of one job running ``iterdpo run --config CONFIG OVERRIDES``."""
    per_node = args.processes_per_node or max(args.gpus_per_node, 1)
    launcher = args.launcher
    if launcher == "auto":
        launcher = "accelerate" if args.nodes > 1 or per_node > 1 else "python"
    if launcher == "python" and (args.nodes > 1 or per_node > 1):
        raise SlurmError("--launcher python runs one process on one node; use accelerate for more")
    sb = [
        f"--job-name={job_name}",
        f"--nodes={args.nodes}",
        "--ntasks-per-node=1",
        f"--output={log_dir}/%x-%j.out",
        "--open-mode=append",
        "--requeue",
        f"--chdir={Path.cwd()}",
    ]
    for flag, value in (("gpus-per-node", args.gpus_per_node or None), ("cpus-per-task", args.cpus_per_task),
                        ("mem", args.mem), ("time", args.time), ("partition", args.partition),
                        ("account", args.account), ("qos", args.qos)):
        if value is not None:
            sb.append(f"--{flag}={value}")
    sb += args.sbatch_arg
    iterdpo = " ".join(["-m iterdpo run --config", _q(config_path), *map(_q, overrides)])
    if launcher == "python":
        cmd = f'srun --ntasks=1 bash -c "exec {_q(args.python)} {iterdpo}"'
    else:
        acc = [
            _q(args.python), "-m accelerate.commands.launch",
            "--num_machines \\$SLURM_NNODES", "--machine_rank \\$SLURM_NODEID",
            "--main_process_ip \\$MASTER_ADDR", "--main_process_port \\$MASTER_PORT",
            "--num_processes \\$((SLURM_NNODES * PROCESSES_PER_NODE))",
        ]
        if args.accelerate_config:
            acc.append(f"--config_file {_q(Path(args.accelerate_config).resolve())}")
            if args.nodes > 1:
                # srun already starts one launcher per node. accelerate's default for DeepSpeed on
                # several machines is the `deepspeed` launcher over pdsh/ssh with a hostfile; with
                # none it starts each node as a separate 1-node world, and both race on the run
                # directory (seen on the 2-node test cluster). `standard` = torchrun on each node.
                acc.append("--deepspeed_multinode_launcher standard")
        elif args.nodes * per_node > 1:
            acc.append("--multi_gpu")
        # each node's task says where it runs (machine rank = Slurm node id) before it starts
        # its PROCESSES_PER_NODE processes, so the log shows every host of the job
        where = "echo [slurm] node \\$SLURM_NODEID of \\$SLURM_NNODES: \\$(hostname);"
        cmd = f'srun --kill-on-bad-exit=1 --nodes="$SLURM_NNODES" --ntasks-per-node=1 bash -c "{where} exec {" ".join(acc)} {iterdpo}"'
    lines = ["#!/bin/bash", *(f"#SBATCH {a}" for a in sb)]
    python = _q(args.python)
    if args.network_interface:
        iface = _q(args.network_interface)
        rendezvous = [
            f"# rendezvous: {args.network_interface}'s address on the job's first node (this script runs there)",
            f"export MASTER_ADDR=$({python} -m iterdpo.slurm address {iface})",
            f"export GLOO_SOCKET_IFNAME={iface} NCCL_SOCKET_IFNAME={iface}",
        ]
    else:
        rendezvous = [
            "# rendezvous: the job's first node",
            'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        ]
    lines += [
        "#",
        "# Written by `iterdpo slurm submit`; resubmit by hand with `sbatch <this file>`.",
        "# Requeue-safe: a requeued job reruns this script and `iterdpo run` resumes from the",
        "# run directory (finished stages are skipped).",
        "set -euo pipefail",
        *args.setup,
        'echo "[slurm] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"',
        *rendezvous,
        "# a free port on the first node, derived from the job id (the same after a requeue)",
        f"export MASTER_PORT=${{MASTER_PORT:-$({python} -m iterdpo.slurm port)}}",
        f"export PROCESSES_PER_NODE={per_node}",
        'echo "[slurm] rendezvous $MASTER_ADDR:$MASTER_PORT"',
        cmd,
        "",
    ]
    return "\n".join(lines)


def sbatch(script: Path, after: str | None = None) -> str:
    cmd = ["sbatch", "--parsable"]
    if after:  # a job id (afterok) or a full dependency such as after:123 (once 123 has started)
        cmd.append(f"--dependency={after if ':' in after else f'afterok:{after}'}")
    try:
        res = subprocess.run([*cmd, str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise SlurmError("sbatch not found: run this on a Slurm login node (or use --dry-run)") from None
    if res.returncode != 0:
        raise SlurmError(f"sbatch {script} failed: {res.stderr.strip()}")
    return res.stdout.strip().split(";")[0]


def job_state(job_id: str) -> str | None:
    """The job's state from scontrol, or None once Slurm has forgotten it (after MinJobAge)."""
    try:
        res = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    except FileNotFoundError:
        raise SlurmError("scontrol not found: run this on a Slurm login node") from None
    if res.returncode != 0:
        return None
    for word in res.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def wait(job_id: str, poll: float = 2.0) -> str:
    """Block until the job reaches a terminal state; return it (None -> 'UNKNOWN')."""
    while True:
        state = job_state(job_id)
        if state is None or state in TERMINAL:
            return state or "UNKNOWN"
        time.sleep(poll)


def submit(args: argparse.Namespace) -> list[str]:
    """Write the resolved config and scripts under <run dir>/slurm/ and submit them."""
    from iterdpo import builtins
    from iterdpo.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    # jobs may start in another directory: make every path of the run absolute
    cfg.run.output_dir = str(Path(cfg.run.output_dir).resolve())
    for field in ("prompts", "eval_prompts"):
        value = getattr(cfg.data, field)
        if value not in builtins.TASKS and not value.startswith("hf:") and Path(value).exists():
            setattr(cfg.data, field, str(Path(value).resolve()))
    if Path(cfg.model.name_or_path).exists():
        cfg.model.name_or_path = str(Path(cfg.model.name_or_path).resolve())
    slurm_dir = cfg.run_dir() / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    config_path = slurm_dir / "config.yaml"
    config_path.write_text(dump_config(cfg))

    jobs: list[tuple[Path, str]] = []
    base = f"iterdpo-{cfg.run.name}"
    if args.iterations_as_jobs:
        for k in range(1, cfg.run.iterations + 1):
            over = [f"run.iterations={k}"]
            counts = cfg.data.prompts_per_iteration
            if isinstance(counts, list):
                over.append(f"data.prompts_per_iteration=[{','.join(map(str, counts[:k]))}]")
            jobs.append((slurm_dir / f"iter_{k}.sbatch", render(args, config_path, slurm_dir, f"{base}-it{k}", over)))
    else:
        jobs.append((slurm_dir / "run.sbatch", render(args, config_path, slurm_dir, base, [])))

    ids: list[str] = []
    after = args.after
    for path, text in jobs:
        path.write_text(text)
        if args.dry_run:
            print(f"# {path}\n{text}")
            continue
        after = sbatch(path, after)
        ids.append(after)
        print(f"[iterdpo] submitted {path.name} as job {after}" + (f" (after {ids[-2]})" if len(ids) > 1 else ""), flush=True)
    return ids


def rendezvous_port(job_id: int, first: int = 20000, span: int = 10000, tries: int = 100) -> int:
    """A port for the job's rendezvous, free on this host (the job's first node).

    Starts at ``first + job_id % span`` so a requeued job (same id) gets the same port and
    two jobs sharing a node get different ones, below Linux's ephemeral range (32768+) so
    outgoing connections do not hold it; moves up while a port is taken.
    """
    import socket

    start = first + job_id % span
    for port in range(start, start + tries):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise SlurmError(f"no free port in {start}..{start + tries - 1} on {socket.gethostname()}")


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` on this host (Linux)."""
    import fcntl
    import socket
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
        except OSError as e:
            raise SlurmError(f"network interface {name!r} has no IPv4 address on {socket.gethostname()}: {e}") from None
    return socket.inet_ntoa(packed[20:24])


def main(args: argparse.Namespace) -> int:
    ids = submit(args)
    if args.wait and ids:
        state = wait(ids[-1])
        print(f"[iterdpo] job {ids[-1]}: {state}", flush=True)
        return 0 if state == "COMPLETED" else 1
    return 0


if __name__ == "__main__":
    # helpers of the rendered sbatch scripts (run on the job's first node):
    #   python -m iterdpo.slurm port           -> a free rendezvous port for $SLURM_JOB_ID
    #   python -m iterdpo.slurm address IFACE  -> IFACE's IPv4 address
    import os

    try:
        if sys.argv[1:2] == ["port"]:
            print(rendezvous_port(int(os.environ.get("SLURM_JOB_ID", "0"))))
        elif sys.argv[1:2] == ["address"] and len(sys.argv) == 3:
            print(interface_address(sys.argv[2]))
        else:
            sys.exit("usage: python -m iterdpo.slurm port | address IFACE")
    except SlurmError as e:
        sys.exit(f"iterdpo.slurm: {e}")
