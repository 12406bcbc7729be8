"""`omnilive serve --ray`: the same FastAPI app, served by Ray Serve with N replicas of the backend.

    omnilive serve --ray --replicas 2                      # a local Ray cluster, started here
    omnilive serve --ray --ray-address auto --replicas 4   # join the cluster `ray start` made

Each replica is a Ray actor that builds the whole app of server/app.py (its own backend and
engine, history store, file store and metrics) with its replica name; Ray Serve's proxy listens
on HOST:PORT and hands every HTTP request, SSE stream and WebSocket to one replica:

    client ──HTTP/WS──▶ Ray Serve proxy (HOST:PORT) ──▶ replica 1: create_app(settings, replica=…)
                                                   └──▶ replica 2: create_app(settings, replica=…)

- The replica's name, `<replica id>@<host>:<pid>`, comes back in the `x-omnilive-replica`
  header of every response and as a field of every realtime event.
- A WebSocket is one call to one replica for its whole life, so a realtime session (its
  conversation and KV blocks) stays on the replica that accepted it.
- A client that goes away makes the proxy cancel the call: the replica's ASGI task is cancelled,
  and the chat stream's `finally` aborts the engine request there, as in one process.
- A replica process that dies is replaced by Ray Serve (the deployment keeps REPLICAS
  replicas); calls in flight on it end with an error from the proxy.
- Several nodes need one database: SQLite (a file on one node) is refused when the cluster has
  more than one node; PostgreSQL by OMNILIVE_DATABASE_URL works anywhere.
- MAX_REPLICAS turns on Ray Serve's autoscaling (between MIN_REPLICAS and MAX_REPLICAS, towards
  TARGET_ONGOING_REQUESTS per replica); GPUS_PER_REPLICA pins replicas to GPUs.
- STAGES runs the speech stage of a Qwen2.5-Omni or Qwen3-Omni model as its own deployment
  (scale_out_stages.py).
- Every proxy answers Ray's own errors in OpenAI's shape (ray_errors.py); any replica's
  /metrics holds every live replica's samples, labelled (scale_out_metrics.py).

Ray is an optional dependency (`pip install 'omnilive[ray]'`): nothing imports this module
unless `--ray` is given.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

from omnilive.server.ray_errors import CALLBACK_IMPORT_PATH
from omnilive.server.scale_out_metrics import RayPeerMetrics, start_board
from omnilive.server.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "omnilive"
DEPLOYMENT_NAME = "omnilive"
# per replica, before the proxy queues: a realtime session holds one for its whole life, and the
# engine batches up to MAX_BATCH requests, queueing the rest itself
MAX_ONGOING_REQUESTS = 64
# a local cluster's shared-memory object store: replicas pass nothing large through it (requests
# and chunks travel as small messages), so it stays small on a shared machine
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
# Ray Serve's proxies first try the replicas on their own node (until those hold
# max_ongoing_requests calls): one proxy would then keep a whole node's worth of requests on one
# replica whose engine batches only MAX_BATCH. omnilive's replicas are few and costly, so the
# proxies Serve starts for us spread by queue length over all replicas instead.
# The proxies also answer Ray's own errors (a dead replica's 500, 503, 408) in OpenAI's shape
# (server/ray_errors.py).
SERVE_ENV = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", "RAY_SERVE_PROXY_PREFER_LOCAL_AZ_ROUTING": "0",
             "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK_IMPORT_PATH}
# Ray Serve's own "throughput optimized" choices: a request's handler and router run on the
# replica's main event loop instead of hopping to other threads' loops, each hop a thread
# wake-up that a busy small machine pays in milliseconds of TTFT; the engine has its own
# thread and a backend loads in another, so nothing blocks that loop. The operator's
# environment may set them otherwise.
SERVE_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
HEALTH_CHECK_PERIOD_S = 5.0
GRACEFUL_SHUTDOWN_S = 10.0


class CannotScaleOut(Exception):
    """A reason not to start on Ray, worded for the operator."""


def replica_name(replica_id: str) -> str:
    """What `x-omnilive-replica` says: Ray Serve's replica id, the node's host name and the pid."""
    return f"{replica_id}@{socket.gethostname()}:{os.getpid()}"


def total_replicas(settings: Settings) -> int:
    """Replicas to start: the stages' together, else REPLICAS (autoscaling starts there too)."""
    return sum(settings.stages.values()) if settings.stages else settings.replicas


def check_stages(settings: Settings) -> None:
    """--stages splits a checkpoint that speaks; the embedded default has no thinker to split."""
    if settings.stages and settings.model in ("default", "omnilive-small"):
        raise CannotScaleOut("--stages needs a Qwen2.5-Omni or Qwen3-Omni checkpoint (--model DIR): the embedded "
                             "default has no thinker and talker to run apart")


def check_database(settings: Settings, nodes: int) -> None:
    """Refuse SQLite on a cluster of several nodes: each node would write its own file."""
    url = settings.resolved_database_url
    if nodes > 1 and url.startswith("sqlite"):
        raise CannotScaleOut(
            f"the Ray cluster has {nodes} nodes, and the history database is the SQLite file {url!r}, "
            "which replicas on other nodes cannot share. Set OMNILIVE_DATABASE_URL to a PostgreSQL "
            "database every node can reach (e.g. postgresql://user@dbhost/omnilive).")


class OmniliveReplica:
    """One Ray Serve replica: the whole omnilive app around its own backend.

    Wrapped by `serve.ingress()` and `serve.deployment(...)` in `deployment()`; Ray Serve calls
    `__serve_build_asgi_app__` once the actor runs, then runs the app's lifespan (which starts
    the engine), and only then counts the replica as ready.
    """

    def __init__(self, settings: Settings, speech: Any = None):
        """speech: the speech deployment's handle with --stages (this replica is a thinker)."""
        self.settings, self.speech = settings, speech

    def __serve_build_asgi_app__(self):
        from ray import serve

        from omnilive.server.app import create_app

        logging.basicConfig(level=self.settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        name = replica_name(serve.get_replica_context().replica_id.unique_id)
        log.info("replica %s: loading %s", name, self.settings.model)
        backend = None
        if self.speech is not None:
            from omnilive.server.scale_out_stages import staged_backend

            backend = staged_backend(self.settings, self.speech)
        app = create_app(self.settings, backend, replica=name)
        try:
            app.state.metrics.peers = RayPeerMetrics(app.state.metrics)
        except ValueError:  # no board: deployed by another driver; /metrics shows this replica only
            log.warning("replica %s: no metrics board; /metrics shows this replica's samples only", name)
        return app


def deployment(settings: Settings) -> Any:
    """The bound Ray Serve application: REPLICAS replicas (or autoscaled between MIN_REPLICAS and
    MAX_REPLICAS), each asking for THREADS CPUs and GPUS_PER_REPLICA GPUs; with STAGES, the
    thinker's count and the speech deployment beside it."""
    from ray import serve

    ingress = serve.ingress()(OmniliveReplica)
    every = dict(max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options=actor_resources(settings),
                 health_check_period_s=HEALTH_CHECK_PERIOD_S, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
    thinkers = replica_count(settings, settings.stages.get("thinker", settings.replicas))
    app = serve.deployment(name=DEPLOYMENT_NAME, **thinkers, **every)(ingress)
    if not settings.stages:
        return app.bind(settings)
    from omnilive.server.scale_out_stages import speech_deployment

    return app.bind(settings, speech_deployment(settings, **every))


def actor_resources(settings: Settings) -> dict:
    """What each replica asks Ray for: THREADS CPUs, and GPUS_PER_REPLICA GPUs when set."""
    if settings.gpus_per_replica:
        return {"num_cpus": settings.threads, "num_gpus": settings.gpus_per_replica}
    return {"num_cpus": settings.threads}


def replica_count(settings: Settings, replicas: int) -> dict:
    """`num_replicas`, or Ray Serve's `autoscaling_config` when MAX_REPLICAS is set."""
    autoscaling = settings.model_copy(update={"replicas": replicas}).autoscaling
    return {"num_replicas": replicas} if autoscaling is None else {"autoscaling_config": autoscaling}


def _import_ray():
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise CannotScaleOut(f"--ray needs Ray Serve, which is not installed ({e}): "
                             "pip install 'omnilive[ray]'") from e
    return ray, serve


def _connect(ray, settings: Settings) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local one sized for REPLICAS replicas."""
    runtime_env = {"env_vars": _forwarded_env()}
    if settings.ray_address is not None:
        log.info("joining the Ray cluster at %s", settings.ray_address)
        ray.init(address=settings.ray_address, runtime_env=runtime_env, log_to_driver=True)
        return
    cpus = max(os.cpu_count() or 1, total_replicas(settings) * settings.threads)
    log.info("starting a local Ray cluster (%d CPUs)", cpus)
    ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
             runtime_env=runtime_env, log_to_driver=True)


def _forwarded_env() -> dict[str, str]:
    """What replicas need from this process's environment: where omnilive's source is (a source
    checkout run with PYTHONPATH) and the OpenMP / thread settings; OMNILIVE_* travel in Settings."""
    names = ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_AFFINITY", "HF_HUB_OFFLINE", *SERVE_LOOP_ENV)
    return {**SERVE_ENV, **SERVE_LOOP_ENV, **{name: os.environ[name] for name in names if name in os.environ}}


def _alive_nodes(ray) -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def serve_on_ray(settings: Settings) -> None:
    """Start (or join) Ray, deploy the app, serve until SIGINT / SIGTERM, then take it down."""
    check_stages(settings)
    ray, serve = _import_ray()
    _connect(ray, settings)
    # after ray.init, which installs its own (sys.exit, and a C++ handler that dumps a stack):
    # SIGTERM unwinds like Ctrl-C, so the cleanup below runs
    signal.signal(signal.SIGTERM, _interrupt)
    try:  # refusals come before anything is deployed, and leave the cluster as it was
        check_database(settings, _alive_nodes(ray))
        serve.start(http_options={"host": settings.host, "port": settings.port},
                    controller_options={"runtime_env": {"env_vars": _forwarded_env()}})
        _check_http_options(serve, settings)
    except BaseException:
        ray.shutdown()
        raise
    replicas = total_replicas(settings)
    cpus, wanted = ray.cluster_resources().get("CPU", 0), replicas * settings.threads
    if cpus < wanted:
        log.warning("the cluster has %g CPUs and %d replicas × %d threads want %d: replicas beyond "
                    "what fits wait for CPUs (fewer --replicas, or --threads 1)", cpus, replicas,
                    settings.threads, wanted)
    try:
        board = start_board(ray)  # noqa: F841 - kept alive by this driver: every replica's /metrics
        log.info("deploying %d replica(s) of %s%s", replicas, settings.model,
                 f" in stages {settings.stages}" if settings.stages else "")
        try:
            serve.run(deployment(settings), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as e:  # Ray Serve gave up starting replicas (their __init__ failed)
            raise CannotScaleOut(f"the replicas did not start: {e}\n(each replica's log: the Ray "
                                 "session's logs/serve folder, e.g. /tmp/ray/session_latest/logs/serve)") from e
        log.info("omnilive on Ray Serve: http://%s:%d (%d replicas)", settings.host, settings.port, replicas)
        _wait_for_signal()
    except KeyboardInterrupt:  # SIGINT / SIGTERM while deploying
        pass
    finally:
        log.info("shutting down")
        try:
            others = set(serve.status().applications) - {APP_NAME}
            if settings.ray_address is not None and others:
                serve.delete(APP_NAME)  # a shared cluster keeps running; only our app goes
            else:
                serve.shutdown()  # Serve's controller and proxies too, so the next start sets its port
        finally:
            ray.shutdown()


def _check_http_options(serve, settings: Settings) -> None:
    """Ray Serve keeps the HTTP options it was first started with on a cluster: refuse to say
    we listen on HOST:PORT when its proxies listen elsewhere."""
    from ray.serve.context import _get_global_client

    config = getattr(_get_global_client(), "http_config", None)
    if config is None:
        return
    if (config.host, config.port) != (settings.host, settings.port):
        raise CannotScaleOut(
            f"Ray Serve already runs on this cluster with its HTTP proxies on {config.host}:{config.port}, "
            f"not {settings.host}:{settings.port}: serve with --host {config.host} --port {config.port}, or "
            "stop it first (`serve shutdown`).")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _wait_for_signal() -> None:
    """Until SIGINT / SIGTERM (KeyboardInterrupt)."""
    while True:
        time.sleep(3600)
