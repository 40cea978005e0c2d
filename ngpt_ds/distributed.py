"""Who am I in the job? Rank discovery for every way ngpt_ds is started.

torchrun and the deepspeed launcher set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; plain `srun` sets SLURM_*; `mpirun` sets OMPI_COMM_WORLD_* (or PMI_*);
a plain `python launch/train.py` sets nothing and runs as a single process. This module
turns whichever is present into the torch.distributed environment variables, so
`deepspeed.init_distributed` always takes the env:// path, and reports an inconsistent
environment as one clear error before any process group is created.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.host_address import routable_address as _routable_address  # tests read it here
from ngpt_ds.rendezvous_failures import RendezvousError as RendezvousError  # importers read them here
from ngpt_ds.rendezvous_failures import rendezvous_failure as rendezvous_failure
from ngpt_ds.slurm_nodes import _first_slurm_host
from ngpt_ds.slurm_nodes import expand_nodelist as expand_nodelist  # tests read it here

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_joined_process_group = False
"""Set by `export`, right before this process joins a process group: see `exit_process`."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    source: str
    """'torch' (torchrun / deepspeed launcher), 'slurm', 'mpi' or 'single'."""
    port_chosen_here: bool = False
    """True for a one-process run given no MASTER_PORT: master_port is 0 there, and `train.builder.init_process_group`
    listens on a port the system chooses before torch's rendezvous looks for it (`_listen_for_rendezvous`). A port
    probed free here was free only when probed (another process could take it before torch listened), and since
    init_process_group listens first nothing read it: it is no longer probed."""


LOOPBACK = "127.0.0.1"
"""The rendezvous address of a single-node run: nothing outside the machine can reach it."""


def free_port(addr: str = LOOPBACK) -> int:
    """A port free on `addr`, the address the rendezvous will listen on (a port free on the loopback
    can be taken on another interface)."""
    family = socket.getaddrinfo(addr, None, type=socket.SOCK_STREAM)[0][0]  # an IPv6 address needs AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def rendezvous_address(single_host: bool, port: int | None = None) -> tuple[str, int]:
    """Where rank 0 listens when ngpt_ds chooses: the loopback for a single-node run, else this host's
    routable address (probed: rank 0 must be able to listen on it); and `port` (MASTER_PORT, the user's) or,
    without one, a port rank 0's rendezvous listens on from this call on (`_listen_for_rendezvous`)."""
    addr = LOOPBACK if single_host else _routable_address()
    free_port(addr)  # an address this host cannot listen on raises OSError here, before any rank is told it
    return addr, _listen_for_rendezvous(addr) if port is None else port


_rendezvous_servers: list = []
"""The TCPStore servers `_listen_for_rendezvous` started: held for the life of the process (torch's store for the
process group shares the server, and the port stays this job's)."""


def _listen_for_rendezvous(addr: str) -> int:
    """Start the server of the job's rendezvous (torch's TCPStore) on a port the system chooses, and return it.

    A port probed free (bind to 0, close) and sent to the other ranks stayed free only until torch listened on it,
    in `init_process_group`: in between, any process opening a connection could be given it, and an mpirun job
    without MASTER_PORT stopped at startup ('rank 0 cannot listen for the job's rendezvous on ...: another process
    on this host holds that port'); the other ranks had been told that port, so none could be taken instead. This
    server listens before the port is sent, and torch's env:// rendezvous on rank 0 shares it (rank 0's store is
    multi-tenant: torch keeps one server a port in each process) instead of listening again. It listens on every
    address of this host, `addr` included; its own client connects over the loopback of `addr`'s family."""
    from torch.distributed import DistError, TCPStore

    loopback = "::1" if ":" in addr else LOOPBACK
    try:
        server = TCPStore(
            loopback,
            0,
            None,
            True,
            timedelta(seconds=60),
            wait_for_workers=False,
            multi_tenant=True,
            use_libuv=os.environ.get("USE_LIBUV", "1") == "1",  # the backend torch's env:// rendezvous asks for
        )
    except DistError as err:  # a RuntimeError: uncaught, rank 0 stopped alone and the others waited in the bcast
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NgptConfigError(
            f"rank 0 cannot listen for the job's rendezvous on this host ({first}): set MASTER_ADDR and MASTER_PORT"
        ) from None
    _rendezvous_servers.append(server)
    return int(server.port)


def _int(env: dict[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise NgptConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def discover(env: dict[str, str] | None = None) -> DistEnv:
    """Read the launcher's environment. Precedence: torch variables, Slurm (unless mpirun started this rank
    inside a Slurm job), MPI, single process."""
    env = dict(os.environ if env is None else env)
    port_chosen_here = False
    present = [v for v in TORCH_VARS if v in env]
    if "RANK" in env or "WORLD_SIZE" in env:
        missing = [v for v in TORCH_VARS if v not in env and v != "LOCAL_RANK"]
        if missing:
            raise NgptConfigError(
                f"inconsistent launch environment: {', '.join(present)} set but "
                f"{', '.join(missing)} missing. Start with torchrun or deepspeed, or set all of "
                f"{', '.join(TORCH_VARS)}"
            )
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        if "LOCAL_RANK" not in env and world > 1:
            # Every rank drives device LOCAL_RANK (DeepSpeed's engine reads it too): read as 0, every rank of a
            # node drove cuda:0, and NCCL stopped at the first collective ("Duplicate GPU detected").
            raise NgptConfigError(
                f"launch environment RANK={rank} WORLD_SIZE={world} without LOCAL_RANK: cannot tell which "
                "device of its node this rank drives. Set LOCAL_RANK (the rank's index on its node, 0 to the "
                "node's rank count - 1) and LOCAL_WORLD_SIZE, or start with torchrun or deepspeed, which set them"
            )
        local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        # DeepSpeed's launcher sets LOCAL_SIZE, not torchrun's LOCAL_WORLD_SIZE: without it, every node of a
        # multi-node `deepspeed` job counted the whole job's ranks as its own.
        local_size = next((v for v in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE") if v in env), None)
        local_world = _int(env, local_size) if local_size is not None else _ranks_here_unnamed(env, rank, world)
        source, addr, port = "torch", env["MASTER_ADDR"], _int(env, "MASTER_PORT")
    elif (
        "SLURM_PROCID" in env
        and "SLURM_NTASKS" in env
        and env.get("SLURM_STEP_ID") is not None
        and not _mpirun_inside_slurm(env)
    ):
        rank, world = _int(env, "SLURM_PROCID"), _int(env, _slurm_size_var(env))
        local_rank = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        local_world = min(_slurm_tasks_on_this_node(env, world), world)
        nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
        if world == 1:  # a one-task step (salloc's interactive step, srun -n1): nobody to meet, as plain python
            addr = env.get("MASTER_ADDR") or LOOPBACK
            port_chosen_here = "MASTER_PORT" not in env
            port = 0 if port_chosen_here else _int(env, "MASTER_PORT")
        else:
            addr = env.get("MASTER_ADDR") or (LOOPBACK if nodes == "1" else _first_slurm_host(env))
            # One port per job step, so two jobs, or two steps of one job, sharing a node do not collide.
            port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else slurm_port(env)
        source = "slurm"
    elif (rank_var := _mpi_rank_var(env)) is not None:
        size_var = _MPI_SIZE[rank_var]
        if size_var not in env and "OMPI_COMM_WORLD_SIZE" not in env:
            raise NgptConfigError(f"MPI launch with {rank_var} but no {size_var}: cannot tell the world size")
        rank = _int(env, rank_var)
        world = _int(env, size_var if size_var in env else "OMPI_COMM_WORLD_SIZE")
        # This node's ranks, as each MPI names them. Without them every rank would drive GPU 0 (NCCL
        # stops: "Duplicate GPU detected") and a multi-node job would listen on the loopback.
        if world > 1 and not any(name in env for name in _MPI_LOCAL_RANK):
            local_rank, local_world = _mpi_node_ranks(rank_var)
        else:
            local_rank = _first_int(env, _MPI_LOCAL_RANK, default=0)
            local_world = _first_int(env, _MPI_LOCAL_SIZE, default=world)
        addr, port = _mpi_master(env, rank, single_host=local_world == world)
        source = "mpi"
    else:
        rank, world, local_rank, local_world, source = 0, 1, 0, 1, "single"
        port_chosen_here = "MASTER_PORT" not in env
        addr, port = LOOPBACK, 0 if port_chosen_here else _int(env, "MASTER_PORT")
    # Only MASTER_PORT can give a port out of range (the derived ones are not). torch refused it once the
    # process group started, a ValueError traceback on every rank ('port must have value from 0 to
    # 65535'); port 0 lets rank 0 listen on any port, one the other ranks cannot know.
    if not 0 <= port <= 65535 or (port == 0 and world > 1):
        raise NgptConfigError(
            f"environment variable MASTER_PORT={env.get('MASTER_PORT')!r} is not a port rank 0 can listen on for "
            f"a job of {world} rank(s): set it to a free port from 1 to 65535, or unset it"
        )
    if not 0 <= rank < world:
        raise NgptConfigError(f"rank {rank} is outside world size {world} ({source} launch environment)")
    if world > 1 and not 0 <= local_rank < local_world:
        # Each rank drives device LOCAL_RANK of its node. A negative one (LOCAL_RANK=-1, the 'not distributed'
        # of many training scripts) made set_device a no-op and DeepSpeed's engine take the current device:
        # every rank of a node drove cuda:0, and NCCL stopped at the first collective ("Duplicate GPU
        # detected"); gloo has no such rule, so CPU runs trained.
        raise NgptConfigError(
            f"node-local rank {local_rank} of rank {rank} is outside its node's {local_world} rank(s) ({source} "
            "launch environment): every rank drives the device of its index on its node, 0 to the node's rank "
            "count - 1. Set LOCAL_RANK and LOCAL_WORLD_SIZE to those (unset LOCAL_RANK=-1 left by another "
            "script), or start with torchrun or deepspeed, which set them"
        )
    return DistEnv(rank, world, local_rank, local_world, addr, port, source, port_chosen_here)


def _ranks_here_unnamed(env: dict[str, str], rank: int, world: int) -> int:
    """This node's rank count for a torch-style launch that sets RANK, WORLD_SIZE and LOCAL_RANK but no
    LOCAL_WORLD_SIZE (a batch script exporting RANK=$SLURM_PROCID, a home-made launcher): the whole job where every
    rank meets on the loopback, else the count of the srun step or MPI launch this rank is, where RANK and
    WORLD_SIZE are that launch's own (an allocation's or another launcher's count says nothing of these ranks).

    Taken as the whole job on any other MASTER_ADDR, a two-node job's memory check counted the other node's ranks
    as this node's (refusing a run that fits), CPU ranks split this node's cores among all of them, and each
    node's ranks sampled the same shares of the startup shard check, leaving the others' unchecked."""
    if world == 1:
        return 1
    if _is_loopback(env.get("MASTER_ADDR", "")):
        return world  # nothing outside this machine can reach the rendezvous: every rank is here
    if (
        env.get("SLURM_STEP_ID") is not None
        and "SLURM_PROCID" in env
        and _slurm_size_var(env) in env  # no task count (SLURM_NTASKS): a KeyError traceback, not the refusal
        and not _mpirun_inside_slurm(env)
        and (_int(env, "SLURM_PROCID"), _int(env, _slurm_size_var(env))) == (rank, world)
    ):
        return min(_slurm_tasks_on_this_node(env, world), world)
    rank_var = _mpi_rank_var(env)
    if rank_var is not None and rank_var in env:
        size_var = _MPI_SIZE[rank_var] if _MPI_SIZE[rank_var] in env else "OMPI_COMM_WORLD_SIZE"
        size = _first_int(env, _MPI_LOCAL_SIZE, default=0)
        if size > 0 and size_var in env and (_int(env, rank_var), _int(env, size_var)) == (rank, world):
            return size
    raise NgptConfigError(
        f"launch environment RANK={rank} WORLD_SIZE={world} MASTER_ADDR={env.get('MASTER_ADDR')} without "
        "LOCAL_WORLD_SIZE: cannot tell how many of the job's ranks share this node (its memory check, its CPU "
        "threads and its share of the startup data check depend on it). Set LOCAL_WORLD_SIZE to this node's "
        "rank count, or start with torchrun or deepspeed, which set it"
    )


def _is_loopback(addr: str) -> bool:
    """Whether only this host reaches `addr`: a loopback address or `localhost` (any case), or the unspecified
    address (0.0.0.0, ::), which a rank connecting to it reaches on its own host."""
    if addr.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:  # a host name: its node is not known here
        return False
    return ip.is_loopback or ip.is_unspecified


_MPI_SIZE = {"OMPI_COMM_WORLD_RANK": "OMPI_COMM_WORLD_SIZE", "PMIX_RANK": "PMIX_SIZE", "PMI_RANK": "PMI_SIZE"}
"""Each MPI's rank variable (Open MPI, PMIx, PMI: MPICH, Intel MPI, srun --mpi=pmi2) and its world size."""


def _mpi_rank_var(env: dict[str, str]) -> str | None:
    return next((v for v in _MPI_SIZE if v in env), None)


def _mpirun_inside_slurm(env: dict[str, str]) -> bool:
    """Whether mpirun (or mpiexec) started this rank inside a Slurm job. Open MPI and MPICH's Hydra start
    their per-node daemons with srun, and the ranks inherit that step's SLURM_PROCID / SLURM_NTASKS, which
    count the daemons (one a node), not the ranks: read as the job's, every rank of one node was rank 0
    of 1. OMPI_COMM_WORLD_* come from Open MPI's launcher only; srun's own MPI plugins (--mpi=pmix,
    pmi2) set PMIX_* / PMI_* equal to Slurm's. The same answer on every rank of a job, which must agree
    on how to meet: the world size, not the rank, is compared."""
    rank_var = _mpi_rank_var(env)
    if rank_var is None:
        return False
    if rank_var == "OMPI_COMM_WORLD_RANK":
        return True
    return env.get(_MPI_SIZE[rank_var], "").strip() != env[_slurm_size_var(env)].strip()


def _slurm_size_var(env: dict[str, str]) -> str:
    """The variable holding this step's task count. SLURM_NTASKS is the allocation's in salloc's interactive
    step (LaunchParameters=use_interactive_step: SLURM_NTASKS=4, SLURM_STEP_NUM_TASKS=1), where a plain
    `python launch/train.py` read world size 4, and rank 0 waited train.dist_timeout_s for ranks that
    were never started. srun sets both to the step's count."""
    return "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS", "").strip() else "SLURM_NTASKS"


SLURM_PORT_BASE, SLURM_PORT_SPAN, SLURM_PORT_STEP_STRIDE = 20000, 12000, 5003
"""A Slurm job's derived rendezvous port: 20000 + (job id + 5003 x step id) % 12000, so 20000-31999,
below Linux's ephemeral ports (32768-60999: the old span, 20000-39999, could meet a port the kernel had
given some outgoing connection). launch/slurm/*.sbatch export 20000 + job id % 12000 (the step id
counts as 0 there): keep them equal (tests/test_launch_discovery.py checks)."""


def slurm_port(env: dict[str, str]) -> int:
    """The rendezvous port of a Slurm step without MASTER_PORT. The step id is mixed in: two srun steps of
    one allocation (srun --overlap, or two in the background) derived the same port from the job id alone,
    and the second one's rank 0 could not listen, or its ranks joined the first step's rendezvous."""
    job = env.get("SLURM_JOB_ID", "0").strip()
    step = env.get("SLURM_STEP_ID", "0").strip()
    job_id = int(job) if job.isascii() and job.isdigit() else 0
    step_id = int(step) if step.isascii() and step.isdigit() else 0
    return SLURM_PORT_BASE + (job_id + SLURM_PORT_STEP_STRIDE * step_id) % SLURM_PORT_SPAN


def _slurm_tasks_on_this_node(env: dict[str, str], world: int) -> int:
    """This node's task count from Slurm's compressed list ("8(x2),4": 8 on nodes 0 and 1, 4 on node 2),
    indexed by SLURM_NODEID. Reading the first entry gave node 2 of that job 8, so its 4 ranks split
    node-local work (threads, the startup shard check's sample) as if it had 8. `world` if unreadable."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or str(world)
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            return world
        counts += [int(match[1])] * int(match[2] or 1)
    node = env.get("SLURM_NODEID", "0")
    return counts[int(node)] if node.isascii() and node.isdigit() and int(node) < len(counts) else counts[0]


_MPI_LOCAL_RANK = (
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "PMI_LOCAL_RANK",
    "PALS_LOCAL_RANKID",
)
"""A rank's index on its node: Open MPI, MPICH and Intel MPI (Hydra), MVAPICH, Cray PMI and PALS (the
mpiexec of HPE Cray EX systems, which sets PMI_RANK / PMI_SIZE and none of the others: every rank of a
node drove GPU 0, and a multi-node job counted as one node listened on the loopback)."""
_MPI_LOCAL_SIZE = (
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "MV2_COMM_WORLD_LOCAL_SIZE",
    "PMI_LOCAL_SIZE",
    "PALS_LOCAL_SIZE",
)
"""The number of ranks on a rank's node, in the same order."""


def _mpi_node_ranks(rank_var: str) -> tuple[int, int]:
    """(this rank's index on its node, the node's rank count), asked of MPI itself (the ranks that share
    memory with this one, in the order of their ranks): for an MPI launcher that sets none of the node-local
    variables (Flux's `flux run`, other PMI or PMIx launchers). Read as 0 of the whole job, every rank of a
    node drove GPU 0 (NCCL: "Duplicate GPU detected"), and a multi-node job listened on the loopback.
    Collective over the job: every rank of such a launch comes here."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise NgptConfigError(
            f"started by an MPI launcher that sets {rank_var} but none of {', '.join(_MPI_LOCAL_RANK)}: cannot "
            "tell which GPU of its node this rank drives. pip install 'ngpt_ds[mpi]' (or mpi4py), so that MPI "
            "tells, or start with mpirun / mpiexec of Open MPI, MPICH or Intel MPI, srun, or torchrun"
        ) from None
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=MPI.COMM_WORLD.Get_rank())
    try:
        return int(node.Get_rank()), int(node.Get_size())
    finally:
        node.Free()


def _first_int(env: dict[str, str], names: tuple[str, ...], default: int) -> int:
    """The first of `names` that `env` sets, as an integer; `default` if none is set."""
    name = next((n for n in names if n in env), None)
    return default if name is None else _int(env, name)


def _mpi_master(env: dict[str, str], rank: int, single_host: bool) -> tuple[str, int]:
    """Rank 0's address and a port, agreed through MPI itself (mpi4py), unless MASTER_ADDR is set."""
    if "MASTER_ADDR" in env:
        return env["MASTER_ADDR"], _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
    try:
        from mpi4py import MPI
    except ImportError:
        raise NgptConfigError(
            "started by mpirun, but mpi4py is not installed: pip install 'ngpt_ds[mpi]' (or mpi4py) "
            "(needs a system MPI, e.g. apt-get install libopenmpi-dev), or set MASTER_ADDR "
            "and MASTER_PORT"
        ) from None
    global _mpi_agreed
    if _mpi_agreed is None:
        mine: tuple[str, int] | str | None = None
        if rank == 0:
            try:
                mine = rendezvous_address(single_host, _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None)
            except (NgptConfigError, OSError) as err:  # no address of its own, or no port to listen on there
                mine = str(err)
                if not isinstance(err, NgptConfigError):
                    mine = f"cannot probe a port on this host's address ({err}): set MASTER_ADDR and MASTER_PORT"
        _mpi_agreed = MPI.COMM_WORLD.bcast(mine, root=0)
    agreed = _mpi_agreed
    if isinstance(agreed, str):
        # Every rank stops with rank 0's reason: raised on rank 0 alone, the others waited in this bcast for
        # good, and rank 0 with them, in the MPI_Finalize of its exit (Open MPI's waits for every rank).
        raise NgptConfigError(agreed if rank == 0 else f"rank 0 cannot choose the job's rendezvous address: {agreed}")
    addr, port = agreed
    return addr, int(env["MASTER_PORT"]) if "MASTER_PORT" in env else port


_mpi_agreed: tuple[str, int] | str | None = None
"""Rank 0's rendezvous address and port as broadcast to this MPI job (or rank 0's reason it has none): agreed once a
process. `discover` runs again later (the startup shard check; a rank whose checks failed, to join the others and
tell them): another broadcast there would pair with nothing on the ranks that do not run it (they waited in it for
good), and another port would leave the first one's server listening for nobody."""


def set_collective_timeout(timeout: timedelta) -> None:
    """Give every process group this collective timeout, including the groups DeepSpeed creates
    later with new_group() and no timeout (ZeRO's data-parallel group): torch gives those its own
    default (30 min on gloo, 10 on NCCL), so a hung rank would stall the others that long instead
    of making them fail within train.dist_timeout_s. Call it before the process group starts."""
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    if isinstance(getattr(distributed_c10d, "default_pg_nccl_timeout", None), timedelta):
        distributed_c10d.default_pg_nccl_timeout = timeout


def export(dist_env: DistEnv) -> None:
    """Set the torch.distributed env:// variables for this process, which is about to join a
    process group (so `exit_process` ends it without interpreter teardown)."""
    global _joined_process_group
    _joined_process_group = True
    os.environ.update(
        {
            "RANK": str(dist_env.rank),
            "WORLD_SIZE": str(dist_env.world_size),
            "LOCAL_RANK": str(dist_env.local_rank),
            "LOCAL_WORLD_SIZE": str(dist_env.local_world_size),
            "MASTER_ADDR": dist_env.master_addr,
            "MASTER_PORT": str(dist_env.master_port),
        }
    )


def exit_process(code: int, *, joined: bool | None = None) -> int:
    """End a process that joined a process group with exit status `code`, skipping Python's
    interpreter teardown; a process that never joined one gets `code` back to exit normally.
    `joined`: whether it did (default: whether `export` ran; scripts that start torch.distributed
    themselves pass True).

    Why: gloo's worker threads can still be releasing the tensors of the last collective when the
    interpreter finalizes (DeepSpeed keeps its process groups alive past destroy_process_group, in
    module globals). Such a thread then needs the GIL, Python ends it with pthread_exit, and the
    unwind aborts the process: "terminate called without an active exception", SIGABRT, exit -6,
    after a run that finished and saved everything (seen on about 1 in 40 4-rank runs; upstream:
    pytorch/pytorch#190489). Everything a run writes is closed before this point (checkpoints are
    sealed, metrics and TensorBoard closed), so only the standard streams and logging need a flush.
    """
    if not (_joined_process_group if joined is None else joined):
        return code
    mpi = sys.modules.get("mpi4py.MPI")  # imported when mpirun started the job (rank discovery)
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()  # mpi4py's own atexit call is skipped, and mpirun fails a rank that exits without it
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code)
