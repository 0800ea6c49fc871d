#!/usr/bin/env bash
# F13: test runs may share the cluster concurrently (USERS is a shared lock), but
# test_cluster_egress's `escape` fixture uses machine-wide fixed names: the route
# 198.18.0.0/15, the address 169.254.77.1/30, and its teardown `ip route del 198.18.0.0/15`
# without dev. A second run's egress test errors ("File exists"), and the first run's
# teardown deletes the second run's route mid-test (its "nothing arrived" check then passes
# vacuously). Driven here through the fixture's own code, twice, in e2e/sandbox/sandbox.sh.
# Exit 0 = two escapes coexist; 1 = the second one fails.
source "$(dirname "$0")/prologue.bash"
e2e/sandbox/sandbox.sh env PY="$PY" bash -euo pipefail -c '
$PY - <<PYEOF
import sys
from e2e import test_cluster_egress as eg
escape = getattr(eg.escape, "__wrapped__", None) or eg.escape.__pytest_wrapped__.obj
first = escape(outside=None); first_link = next(first).netns.replace(eg.ESCAPE_NETNS_PREFIX, eg.ESCAPE_LINK_PREFIX)
print("run A: escape up")
second = escape(outside=None)
try:
    next(second); print("run B: escape up"); ok = True
except Exception as exc:
    print("run B:", type(exc).__name__, getattr(exc, "stderr", exc).strip()); ok = False
    import subprocess
    left = subprocess.run(["ip", "route", "show", "198.18.0.0/15"], capture_output=True, text=True).stdout.strip()
    print("the route of run A after the failed setup of run B:", left or "<deleted by the cleanup of run B>")
import subprocess
def routed():
    return subprocess.run(["ip", "route", "show", "root", "198.18.0.0/15"], capture_output=True, text=True).stdout.strip()
a_routes = routed()
try: next(second)
except StopIteration: pass
except Exception: pass
after = routed()
print("routes into the outside before/after run B cleaned up:", repr(a_routes), "/", repr(after))
if ok and f"dev {first_link}" not in after:
    print("FAIL: the cleanup of run B deleted the route of run A"); ok = False
try: next(first)
except StopIteration: pass
except Exception: pass
print("PASS" if ok else "FAIL: two runs cannot run the egress tests at the same time")
sys.exit(0 if ok else 1)
PYEOF
'
