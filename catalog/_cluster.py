"""The in-process dask cluster a local ingest runs on, bound to the loopback interface.

dask's defaults suit an interactive notebook, not a command-line tool: ``LocalCluster``
starts the scheduler's HTTP server (the dashboard) on ``0.0.0.0:8787``, unauthenticated
and reachable from the network, and its worker's HTTP server on every interface too;
ingests running at once then fight over port 8787 ("Port 8787 is already in use").
Here both servers listen on 127.0.0.1 at a free port, with no dashboard routes, unless
the caller asks for a dashboard at an address of their choosing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["local_client"]

#: Loopback, any free port: the HTTP servers dask always starts (health, metrics).
_LOOPBACK_ANY_PORT = "127.0.0.1:0"


def local_client(workers: int | None, dashboard: str | None = None) -> tuple[Any, Any]:
    """A client on a new in-process cluster of one worker with ``workers`` threads
    (default: the cores, at most 8), and the cluster (close both when done).

    ``dashboard`` (e.g. ``127.0.0.1:8787``, or ``:8787`` for every interface) serves the
    dask dashboard there; without it no dashboard is served, and every server dask opens
    listens on 127.0.0.1 only, at a free port."""
    from distributed import Client, LocalCluster

    n = workers or min(os.cpu_count() or 1, 8)
    cluster = LocalCluster(
        n_workers=0,  # the worker is added below, once its HTTP server is off the dashboard
        threads_per_worker=n,
        processes=False,
        dashboard_address=None,
        worker_dashboard_address=_LOOPBACK_ANY_PORT,
        silence_logs=logging.ERROR,
        scheduler_kwargs={"dashboard_address": dashboard or _LOOPBACK_ANY_PORT, "dashboard": dashboard is not None},
    )
    try:
        # LocalCluster turns a worker's dashboard on whenever it is given an address;
        # keep the loopback address and turn the dashboard off
        cluster.new_spec["options"]["dashboard"] = False
        cluster.scale(1)
        # never the process-wide default: ingests running at once in one process (threads)
        # would otherwise leave dask's global scheduler pointing at a closed client
        client = Client(cluster, set_as_default=False)
        client.wait_for_workers(1, timeout=60)
    except BaseException:
        cluster.close()
        raise
    return client, cluster
