"""Ray start-up for every seewhy entry point: the environment Ray Train needs, and one `init_ray`.

Library code never calls ``ray.init``; the CLI (and the notebook API) call ``init_ray`` once, and
``seewhy submit`` reads ``RAY_ENV`` to keep those keys out of a job's runtime_env.
"""

from __future__ import annotations

import os

# RAY_TRAIN_ENABLE_PRINT_PATCH=0: Ray Train V2 otherwise sends a worker's print() both to stdout and
# to its logger, so every progress line of the training loop reached the console twice.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def init_ray(
    address: str | None, num_cpus: int | None, object_store_mb: int | None, dashboard: bool = True
) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray Train's controller collects each worker's report on its health-check tick (2 s by default),
    # and a report blocks until the previous one is collected: per-epoch checkpoints on small logs
    # would spend most of their time waiting. A quarter second keeps epochs cheap.
    env = {k: os.environ.get(k, v) for k, v in RAY_ENV.items()}
    os.environ.update(env)  # a local Ray started here inherits it
    # The dashboard also serves the state API that Ray Train's placement-group cleaner polls; it
    # listens on 127.0.0.1 only (DESIGN.md: failure and input rules).
    kwargs: dict = {
        "include_dashboard": dashboard,
        "dashboard_host": "127.0.0.1",
        "configure_logging": False,
        "runtime_env": {"env_vars": env},
    }
    if address:
        kwargs["address"] = address
    else:
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        if object_store_mb:
            kwargs["object_store_memory"] = object_store_mb * 1024**2
    ray.init(**kwargs)
