"""Ray itself: importing it lazily, joining or starting an instance, sizing the worker pool, running a dataset.

Nothing here imports Ray at module level: the package, and every job not run on Ray, work
without it installed; :func:`import_ray` says how to install it when a job needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from codeformer.errors import CodeFormerError, OptionError
from codeformer.precision import SINGLE_ARENA_ENV

if TYPE_CHECKING:
    import ray.data

__all__ = ["RAY_INSTALL", "Workers", "import_ray", "init_local_ray", "plan_workers", "ray_session", "run_dataset"]

logger = logging.getLogger(__name__)

RAY_INSTALL = 'pip install "ray[data]"'
LOCAL_NODE_IP = "127.0.0.1"
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
# Read tasks running at once per worker: enough to have the next inputs' bytes ready, few enough to
# keep at most a few inputs' bytes in flight per worker.
READ_AHEAD = 2
# Memory a worker process needs: every network loaded plus one face's activations, with margin (peak RSS
# 2.2 to 2.9 GiB in benchmarks/bench_memory.py and bench_end_to_end.py on CPU). Caps the default pool.
WORKER_MEMORY_BYTES = 3 * 2**30
# Environment variables every worker needs to find the weights the way the driver does.
FORWARDED_ENV = ("CODEFORMER_WEIGHTS_DIR", "CODEFORMER_WEIGHTS_MIRROR")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra
    except ImportError:
        raise CodeFormerError(f"running on Ray needs Ray Data: {RAY_INSTALL}") from None
    return ray


def init_local_ray(**init_arguments: Any) -> None:
    """``ray.init`` for an instance of this machine alone: every Ray server listens on 127.0.0.1 only.

    Ray (2.x on Linux) swaps a loopback ``_node_ip_address`` for the machine's reachable address, and
    its gRPC servers then listen on every interface. The swap is skipped when Ray believes clusters
    are off (its switch for Windows and macOS), and a node whose address is 127.0.0.1 binds its
    servers, and those of the workers it starts, to loopback. The switch is flipped for the start
    only. ``init_arguments`` go to ``ray.init`` (``num_cpus``, ``runtime_env``, ...).
    """
    ray = import_ray()
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    cluster_switch = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if cluster_switch is not None:
        constants.ENABLE_RAY_CLUSTER = False
    # Ray warns at every start that its token authentication is on (its default): nothing to act on here.
    token_log = logging.getLogger(TOKEN_SETUP_LOGGER)
    token_log_level = token_log.level
    token_log.setLevel(logging.ERROR)
    try:
        # A fresh instance even when RAY_ADDRESS points elsewhere; no dashboard (another open port).
        ray.init(address="local", include_dashboard=False, _node_ip_address=LOCAL_NODE_IP, **init_arguments)
    finally:
        token_log.setLevel(token_log_level)
        if cluster_switch is not None:
            constants.ENABLE_RAY_CLUSTER = cluster_switch


def _check_address(address: str) -> None:
    if address == "local" or address == "auto" or address.startswith("ray://") or ":" in address:
        return
    raise CodeFormerError(f"Ray address {address!r}: use local, auto or ray://host:port")


@contextlib.contextmanager
def ray_session(address: str, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the body: ``local`` (a new instance here), ``auto`` (this machine's cluster) or ``ray://host:port``.

    When Ray is already initialised in this process (a library user, tests) that instance is used and
    left running. Otherwise the instance joined or started here is shut down on the way out, Ctrl-C
    included: workers and actors of the job stop with it. A ``local`` instance listens on 127.0.0.1 only
    and offers ``num_cpus`` CPUs (default: all). Workers get the driver's ``CODEFORMER_WEIGHTS_DIR`` /
    ``CODEFORMER_WEIGHTS_MIRROR``, and one malloc arena (``MALLOC_ARENA_MAX=1``).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    _check_address(address)
    # The workers' one malloc arena (see run_dataset) set for the whole job too: workers Ray starts ahead
    # for the job then serve the actors, instead of each actor waiting for a process of its own.
    env = {**SINGLE_ARENA_ENV, **{name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}}
    arguments: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                                 "logging_level": logging.WARNING}
    try:
        if address == "local":
            init_local_ray(num_cpus=num_cpus, **arguments)
        else:
            ray.init(address=address, **arguments)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        hint = ""
        if address == "auto":
            hint = "; start one first (`ray start --head`, see Ray's cluster docs) or use local"
        raise CodeFormerError(f"cannot connect to Ray at {address}: {reason}{hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Workers:
    """The actor pool of a job: how many actors, and what each one reserves."""

    count: int  # actors restoring at once
    cpus: int  # CPUs each reserves; also its torch threads
    gpus: int  # 1: each actor has a GPU of its own; 0: CPU actors

    def describe(self) -> str:
        unit = f"{self.gpus} GPU + {self.cpus} CPU" if self.gpus else f"{self.cpus} CPU"
        return f"{self.count} worker{'s' if self.count != 1 else ''} ({unit} each)"


def plan_workers(count: int | None = None, cpus: int | None = None, *, device: str = "auto") -> Workers:
    """Size the pool from the cluster: one actor per GPU, or (no GPU, or ``device="cpu"``) one per CPU slot.

    ``count`` sets the number of actors, ``cpus`` the CPUs (torch threads) of each. Without ``count``
    the pool is also capped by the cluster's memory, at :data:`WORKER_MEMORY_BYTES` per worker.
    """
    ray = import_ray()
    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    cluster_cpus = max(1, int(resources.get("CPU", 1)))
    use_gpus = device != "cpu" and device != "mps" and cluster_gpus > 0
    if device.startswith("cuda") and not cluster_gpus:
        raise OptionError("device", device, "the Ray cluster has no GPU; use auto or cpu")
    per_worker_cpus = cpus or 1
    if per_worker_cpus > cluster_cpus:
        raise CodeFormerError(f"each worker asks for {per_worker_cpus} CPUs; the Ray cluster has {cluster_cpus}")
    default = cluster_gpus if use_gpus else max(1, cluster_cpus // per_worker_cpus)
    if not count and "memory" in resources:
        fitting = max(1, int(resources["memory"] // WORKER_MEMORY_BYTES))
        if fitting < default:
            logger.info("%d workers would fit the cluster's CPUs, %d its memory (%.0f GiB): starting %d",
                        default, fitting, resources["memory"] / 2**30, fitting)
            default = fitting
    return Workers(count=count or default, cpus=per_worker_cpus, gpus=1 if use_gpus else 0)


def quiet_data_context() -> None:
    """Ray Data's own progress bars and per-run banners off: the driver shows one bar over inputs."""
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # It warns, once per process, that the bars just turned off are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def run_dataset(
    rows: list[dict[str, Any]],
    worker: type,
    job: object,
    workers: Workers,
    on_row: Callable[[Mapping[str, Any]], None],
    *,
    read: Callable[[Mapping[str, Any], Any], dict[str, Any]] | None = None,
) -> None:
    """Stream ``rows`` through an actor pool of ``worker(job)``; ``on_row`` sees every result row as it comes.

    Each row is its own block, so results stream back one by one and idle actors take the next
    row. ``read(row, job)``, when given, runs first as Ray Data tasks of its own (input bytes fetched
    while the actors compute): they reserve no CPU, since the actors hold them all, and at most
    :data:`READ_AHEAD` per worker run at once. A worker that cannot start (networks missing on that
    machine) or dies is one :class:`CodeFormerError` naming the cause. Ctrl-C stops the dataset
    (its actors end).
    """
    ray = import_ray()
    quiet_data_context()
    dataset: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    if read is not None:
        dataset = dataset.map(read, fn_kwargs={"job": job}, num_cpus=0,
                              concurrency=READ_AHEAD * max(1, workers.count))
    dataset = dataset.map(
        worker,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers.count, len(rows)))),
        num_cpus=workers.cpus,
        num_gpus=workers.gpus,
        # Ray Data calls a worker from a thread of its own, whose glibc arena cannot keep the networks'
        # large blocks: every activation would be a fresh mapping (a 16-frame segment took 107-120 s
        # instead of 69 s). One arena for the whole process lets the runtime tuning work there too.
        runtime_env={"env_vars": dict(SINGLE_ARENA_ENV)},
    )
    try:
        for row in dataset.iter_rows():
            on_row(row)
    except (KeyboardInterrupt, CodeFormerError):
        raise
    except Exception as error:  # noqa: BLE001 - Ray wraps a worker's failure in its own types
        raise CodeFormerError(f"the Ray job failed: {_root_cause(error)}") from None


def _root_cause(error: BaseException) -> str:
    """The innermost message of a Ray error chain (a worker's CodeFormerError reads as itself)."""
    seen: set[int] = set()
    cause: BaseException | None = error
    message = ""
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, CodeFormerError):
            return str(cause)
        text = " ".join(str(cause).split())
        message = text.splitlines()[0] if text else type(cause).__name__
        inner = getattr(cause, "cause", None)
        cause = inner if isinstance(inner, BaseException) else (cause.__cause__ or cause.__context__)
    return message[:300]
