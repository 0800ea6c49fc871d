"""Build the pinned binaries from the Go module proxy into `paths.bin_dir()`.

Each tool gets a throwaway wrapper module under the cache (`<cache>/tools/<tool>-<ver>/src`):
a go.mod requiring the pinned version, a `tools.go` blank-importing its commands, `go mod
tidy`, `go build`. Kubernetes needs the wrapper because its go.mod points the staging modules
(k8s.io/api, client-go, ...) at local folders, so `go install k8s.io/kubernetes/...@v` fails:
the wrapper replaces each of them with its released v0.x module instead.

Each tool builds into its own cache dir keyed by its own version (`paths.tool_dir`:
`<cache>/tools/<tool>-<version>/{src,bin}`), and `paths.bin_dir()` (keyed by every pinned
version) holds symlinks to them. A binary already present is not rebuilt (delete it, or its
tool dir, to force a rebuild); bumping one version rebuilds that tool only.
Measured cold on this 2-core machine while other jobs were running: Kubernetes about 12.5 min,
everything (with etcd, CoreDNS, metrics-server, helm, kubeconform, helm-unittest) about 23 min;
kube-router (the NetworkPolicy enforcer) added about 10 min on 2026-11-30 (cold, one core,
other jobs running).
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from e2e.cluster import paths, versions

KUBE_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "kubeadm",
)

# Both packages carry a copy of the version variables; kubectl refuses to parse the default
# "v0.0.0-master+$Format:%H$", so set them for real.
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")

_REPLACE_LINE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)


@dataclass(frozen=True)
class GoTool:
    """One wrapper module and the binaries it produces."""

    name: str
    """Folder name of the wrapper module and label in progress output; a key of versions.PINNED."""
    requires: dict[str, str]
    """Module path -> version required by the wrapper."""
    commands: dict[str, str]
    """Binary name -> Go package of its main."""
    replaces: dict[str, str] = field(default_factory=dict)
    """Module path -> version (`replace M => M V`) or "OTHER V" (`replace M => OTHER V`).

    Needed where the tool's own go.mod has replaces: Go ignores them in a dependency."""
    ldflags: str = ""


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The modules that k8s.io/kubernetes's go.mod replaces with folders under ./staging."""
    return sorted(set(_REPLACE_LINE.findall(kubernetes_go_mod)))


def version_ldflags(version: str, build_date: str) -> str:
    """-ldflags setting the Kubernetes version variables (version like "v1.37.2")."""
    major, minor = version.removeprefix("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    flags = [f"-X {pkg}.{key}={value}" for pkg in VERSION_PACKAGES for key, value in values.items()]
    return " ".join(["-s", "-w", *flags])


def render_go_mod(tool: GoTool, go_version: str = "1.26") -> str:
    lines = [f"module zt-relay.local/build/{tool.name}", "", f"go {go_version}", ""]
    lines += ["require ("] + [f"\t{m} {v}" for m, v in sorted(tool.requires.items())] + [")", ""]
    if tool.replaces:
        targets = [(m, v if " " in v else f"{m} {v}") for m, v in sorted(tool.replaces.items())]
        lines += ["replace ("] + [f"\t{m} => {target}" for m, target in targets] + [")", ""]
    return "\n".join(lines)


def render_tools_go(tool: GoTool) -> str:
    imports = "".join(f'\t_ "{pkg}"\n' for pkg in sorted(set(tool.commands.values())))
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Use the installed Go; never download a toolchain a dependency's go.mod suggests.
    env["GOTOOLCHAIN"] = "local"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "0"
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    print(f"+ {' '.join(cmd)}  (in {cwd})", flush=True)
    return subprocess.run(cmd, cwd=cwd, env=_go_env(), check=True, text=True, stdout=subprocess.PIPE).stdout


def kubernetes_tool() -> GoTool:
    """Download k8s.io/kubernetes's go.mod (through the proxy) and derive its wrapper."""
    # go runs in the cache dir (outside any module); on a fresh machine nothing made it yet.
    paths.cache_root().mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{versions.KUBERNETES}"],
        env=_go_env(), check=True, text=True, stdout=subprocess.PIPE, cwd=paths.cache_root(),
    ).stdout
    go_mod = Path(json.loads(out)["GoMod"]).read_text()
    staged = staging_modules(go_mod)
    if not staged:
        raise RuntimeError(f"no staging replaces found in k8s.io/kubernetes@{versions.KUBERNETES} go.mod")
    build_date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return GoTool(
        name="kubernetes",
        requires={"k8s.io/kubernetes": versions.KUBERNETES},
        commands={cmd: f"k8s.io/kubernetes/cmd/{cmd}" for cmd in KUBE_COMMANDS},
        replaces={m: versions.STAGING for m in staged},
        ldflags=version_ldflags(versions.KUBERNETES, build_date),
    )


def other_tools() -> list[GoTool]:
    helm_pkg = "helm.sh/helm/v3/internal/version"
    return [
        GoTool("etcd", {"go.etcd.io/etcd/server/v3": versions.ETCD}, {"etcd": "go.etcd.io/etcd/server/v3"}),
        GoTool("coredns", {"github.com/coredns/coredns": versions.COREDNS}, {"coredns": "github.com/coredns/coredns"}),
        GoTool(
            "metrics-server",
            {"sigs.k8s.io/metrics-server": versions.METRICS_SERVER},
            {"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
        ),
        GoTool(
            "helm",
            {"helm.sh/helm/v3": versions.HELM},
            {"helm": "helm.sh/helm/v3/cmd/helm"},
            ldflags=f"-s -w -X {helm_pkg}.version={versions.HELM} -X {helm_pkg}.gitTreeState=clean",
        ),
        GoTool(
            "kubeconform",
            {"github.com/yannh/kubeconform": versions.KUBECONFORM},
            {"kubeconform": "github.com/yannh/kubeconform/cmd/kubeconform"},
            ldflags=f"-s -w -X main.version={versions.KUBECONFORM}",
        ),
        GoTool(
            "kube-router",
            {"github.com/cloudnativelabs/kube-router/v2": versions.KUBE_ROUTER},
            {"kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"},
            ldflags=f"-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={versions.KUBE_ROUTER}",
        ),
        GoTool(
            "registry",
            {"github.com/distribution/distribution/v3": versions.REGISTRY},
            {"registry": "github.com/distribution/distribution/v3/cmd/registry"},
            ldflags=f"-s -w -X github.com/distribution/distribution/v3/version.version={versions.REGISTRY}",
        ),
        GoTool(
            "helm-unittest",
            {"github.com/helm-unittest/helm-unittest": versions.HELM_UNITTEST},
            {"untt": "github.com/helm-unittest/helm-unittest/cmd/helm-unittest"},
            # Copied from helm-unittest's go.mod (it builds against its fork of yaml-jsonpath).
            replaces={"github.com/vmware-labs/yaml-jsonpath": "github.com/helm-unittest/yaml-jsonpath v0.4.0"},
        ),
    ]


def build_tool(tool: GoTool) -> None:
    """Build the tool's missing binaries into its own dir (`paths.tool_dir`)."""
    bin_dir = paths.tool_dir(tool.name) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    missing = [name for name in tool.commands if not (bin_dir / name).exists()]
    if not missing:
        return
    src = paths.tool_dir(tool.name) / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(render_go_mod(tool))
    (src / "tools.go").write_text(render_tools_go(tool))
    _run(["go", "mod", "tidy"], src)
    tmp = bin_dir / ".partial"
    tmp.mkdir(parents=True, exist_ok=True)
    # One `go build` per tool so shared packages compile once; -p 2 matches the CI machine.
    for name in missing:
        _run(["go", "build", "-p", "2", "-trimpath", "-ldflags", tool.ldflags, "-o", str(tmp / name), tool.commands[name]], src)
        # Rename last so an interrupted build never leaves a half-written binary that counts as present.
        os.replace(tmp / name, bin_dir / name)


HELM_UNITTEST_PLUGIN = """\
name: "unittest"
version: "{version}"
usage: "unittest for helm charts"
description: "helm-unittest built from source by e2e.cluster.build"
ignoreFlags: false
command: "$HELM_PLUGIN_DIR/untt"
"""


def install_helm_unittest_plugin(bin_dir: Path) -> None:
    """Lay the built helm-unittest out as a plugin dir, so `helm unittest` works with HELM_PLUGINS."""
    plugin = paths.helm_plugins_dir() / "helm-unittest"
    plugin.mkdir(parents=True, exist_ok=True)
    (plugin / "plugin.yaml").write_text(HELM_UNITTEST_PLUGIN.format(version=versions.HELM_UNITTEST.removeprefix("v")))
    target = plugin / "untt"
    if target.exists() or target.is_symlink():
        target.unlink()
    target.symlink_to(bin_dir / "untt")


def link_bin_dir(tools: dict[str, tuple[str, ...]], bin_dir: Path) -> None:
    """Point `bin_dir/<command>` at each tool's own build of it (tool name -> commands)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool, commands in tools.items():
        for command in commands:
            link, target = bin_dir / command, paths.tool_dir(tool) / "bin" / command
            if link.is_symlink() or link.exists():
                if link.is_symlink() and os.readlink(link) == str(target):
                    continue
                link.unlink()
            link.symlink_to(target)


def commands_by_tool() -> dict[str, tuple[str, ...]]:
    return {"kubernetes": KUBE_COMMANDS, **{t.name: tuple(t.commands) for t in other_tools()}}


def build_all() -> Path:
    missing = [
        name for name, commands in commands_by_tool().items()
        if any(not (paths.tool_dir(name) / "bin" / c).exists() for c in commands)
    ]
    if missing and shutil.which("go") is None:
        raise SystemExit("build: `go` is not on PATH (Go 1.26 is needed to build the pinned binaries)")
    for name, commands in commands_by_tool().items():
        if name not in missing:
            print(f"{name} {versions.PINNED[name]}: present ({', '.join(commands)})", flush=True)
    # kubernetes_tool() asks the module proxy for a go.mod: only when Kubernetes is missing.
    tools = ([kubernetes_tool()] if "kubernetes" in missing else []) + [t for t in other_tools() if t.name in missing]
    for tool in tools:
        build_tool(tool)
        shutil.rmtree(paths.tool_dir(tool.name) / "bin" / ".partial", ignore_errors=True)
    bin_dir = paths.bin_dir()
    link_bin_dir(commands_by_tool(), bin_dir)
    install_helm_unittest_plugin(bin_dir)
    print(f"binaries in {bin_dir}", flush=True)
    return bin_dir


if __name__ == "__main__":
    sys.exit(build_all() and 0)
