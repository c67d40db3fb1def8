"""Ray's log lines that tell a user of these jobs nothing, dropped where they are logged.

Ray forwards every worker's log to the driver's console, and a few of its own lines drown the jobs' progress:
Ray Train's placement-group cleaner warns every two seconds that it cannot query the State API when the Ray
has no dashboard (an embedded one: it keeps working, it only cannot check on the controller), and each worker
logs every report as a dump of its metrics (the driver's progress line says the same in one line).
:func:`drop_ray_noise` installs the filters in the process it runs in: Ray Train workers call it (so jobs on a
cluster get it too), and an embedded Ray runs it in every worker as its ``worker_process_setup_hook``.
"""
from __future__ import annotations

import importlib.util
import logging

NOISE = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner":
        ("State API may be temporarily unavailable",),
    "ray.train.v2._internal.execution.context": ("Reporting training result",),
    "ray.train.v2.torch.train_loop_utils": ("Moving model to device", "Wrapping provided model in"),
}
"""The module that logs -> fragments of its messages that are dropped."""
SETUP_HOOK = "dien.ray_logs.drop_ray_noise"
"""An embedded Ray's ``worker_process_setup_hook`` (a dotted path: Ray imports the module and calls this)."""


class DropMessages(logging.Filter):
    """Drops the records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def logger_names(module: str) -> list[str]:
    """The names ``module``'s logger may have: the module's, and its file's (some of Ray's modules log through
    ``logging.getLogger(__file__)``)."""
    names = [module]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # another Ray version: nothing to filter there
        return names
    if spec is not None and spec.origin:
        names.append(spec.origin)
    return names


def drop_ray_noise() -> None:
    """Install :data:`NOISE`'s filters in this process (once)."""
    for module, fragments in NOISE.items():
        for name in logger_names(module):
            logger = logging.getLogger(name)
            if not any(isinstance(f, DropMessages) for f in logger.filters):
                logger.addFilter(DropMessages(fragments))
