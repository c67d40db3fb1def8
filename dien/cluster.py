"""Connecting a job to Ray: the cluster it was submitted to, or an embedded local one."""
from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

import ray

from dien.ray_logs import SETUP_HOOK

logger = logging.getLogger(__name__)


def default_local_cpus() -> int:
    """Logical CPUs for an embedded Ray: twice the cores, at least 4, so that Ray Data's read, shuffle and
    write tasks can run side by side even on a 2-core machine (they mostly wait on I/O and each other)."""
    return max(4, 2 * (os.cpu_count() or 1))


GCS_ADDRESS_ENV = "RAY_GCS_ADDRESS"
"""The cluster's GCS address (host:port), which ``platform/cluster-up.sh`` writes next to the dashboard URL."""


def cluster_address(address: str) -> str:
    """What ``ray.init`` takes for ``address``. A dashboard URL (``http://host:8265``: what ``ray job submit``
    and ``serve deploy`` take, and what ``runs/cluster/env`` exports as RAY_ADDRESS) names the cluster, but a
    driver joins it through the GCS: ``RAY_GCS_ADDRESS`` when set, else the cluster on this machine."""
    if not address.startswith(("http://", "https://")):
        return address
    if os.environ.get(GCS_ADDRESS_ENV):
        return os.environ[GCS_ADDRESS_ENV]
    if urlparse(address).hostname in ("127.0.0.1", "localhost", "::1"):
        return "auto"
    raise ValueError(f"{address} is a dashboard URL, which `ray job submit` takes; to run this job directly, give "
                     f"the cluster's GCS address (host:6379) with --address or {GCS_ADDRESS_ENV}, or submit it with "
                     "`ray job submit`")


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join a Ray cluster, or start an embedded one.

    ``address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets): connect to that cluster ("auto": the
    one started on this machine by ``ray start``; a dashboard URL: see :func:`cluster_address`). Otherwise start
    a local Ray with ``num_cpus`` logical CPUs (default :func:`default_local_cpus`). Does nothing if Ray is
    already initialized.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        target = cluster_address(address)
        logger.info("connecting to the Ray cluster at %s%s", target, f" ({address})" if target != address else "")
        ray.init(address=target, logging_level=logging.WARNING)
    else:
        num_cpus = num_cpus or default_local_cpus()
        logger.info("starting an embedded Ray with %d logical CPUs (no dashboard; Ray's log lines that say "
                    "nothing here are dropped, see dien/ray_logs.py)", num_cpus)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"worker_process_setup_hook": SETUP_HOOK})
