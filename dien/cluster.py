"""Connecting a job to Ray: the cluster it was submitted to, or an embedded local one."""
from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def default_local_cpus() -> int:
    """Logical CPUs for an embedded Ray: twice the cores, at least 4, so that Ray Data's read, shuffle and
    write tasks can run side by side even on a 2-core machine (they mostly wait on I/O and each other)."""
    return max(4, 2 * (os.cpu_count() or 1))


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join a Ray cluster, or start an embedded one.

    ``address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets): connect to that cluster ("auto": the
    one started on this machine by ``ray start``). Otherwise start a local Ray with ``num_cpus`` logical
    CPUs (default :func:`default_local_cpus`). Does nothing if Ray is already initialized.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        num_cpus = num_cpus or default_local_cpus()
        logger.info("starting an embedded Ray with %d logical CPUs", num_cpus)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
