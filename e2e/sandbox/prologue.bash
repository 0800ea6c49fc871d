# Sourced first by every sandbox script (e2e/sandbox/*.sh; not a test itself: no .sh suffix).
# Strict mode, the repository's root as the working directory, the project's Python as $PY,
#   on_exit CMD        run CMD (eval'd) when the script exits, after the ones added before it;
#   sim_cgroup NAME    an empty v2 cgroup NAME-<this shell's pid> on the host, as $SIMCG (full
#                      path), $CG (its name), $V2 (the v2 hierarchy's root): only so the harness's
#                      OUTPUT rule, which matches a cgroup path, can be installed; removed on exit.
#                      Its own per run: scripts run side by side (pytest-xdist workers, other
#                      test runs on the machine), and a rule naming a cgroup another one removed
#                      fails to install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-$PWD/.venv/bin/python}

_on_exit=()
on_exit() { _on_exit+=("$1"); }
_run_on_exit() {
  local cmd
  for cmd in ${_on_exit[@]+"${_on_exit[@]}"}; do eval "$cmd" || true; done
}
trap _run_on_exit EXIT

sim_cgroup() {
  V2=/sys/fs/cgroup/unified
  [ -d "$V2" ] || V2=/sys/fs/cgroup
  CG=$1-$$
  SIMCG=$V2/$CG
  mkdir -p "$SIMCG"
  on_exit 'rmdir "$SIMCG" 2>/dev/null'
}
