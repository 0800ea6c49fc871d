"""The local cluster's entry points, gathered for callers (`__main__`, fixtures, tests).

  up, start, stop, restart    `startup`   (bring up; one component at a time)
  down                        `teardown`  (remove every trace of ours, and only ours)
  status, print_logs, health  `health`
"""

from e2e.cluster.health import current_layout, health, healthy, node_ready, print_logs, process_states, status  # noqa: F401
from e2e.cluster.startup import restart, start, stop, up  # noqa: F401
from e2e.cluster.teardown import down  # noqa: F401
