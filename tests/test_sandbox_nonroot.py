"""The sandbox unprivileged: bubblewrap in a user namespace of its own, run as `nobody`.

As root, bwrap needs no user namespace; a user who installs agentmill without root gets the
other path (`--unshare-user`). Here the whole escape suite (`tests/test_sandbox.py`) runs again
as uid 65534, and a machine that refuses the namespace is a clear error saying what to change.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from simulators import sandbox

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _nobody_env() -> dict[str, str]:
    """The code and the packages on the path; nothing else of ours (no key, no HOME)."""
    packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return {
        "PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), *sorted(packages)]),
    }


READABLE = (
    "import os, sys, sysconfig, pytest, pydantic, simulators.sandbox\n"
    "open(os.path.realpath(sys.executable), 'rb').close()\n"  # bwrap binds it: read, not exec
    "os.listdir(sysconfig.get_paths()['stdlib'])\n"
)


def _interpreter() -> str | None:
    """An interpreter of this version that `nobody` can run with our packages (this one may
    live under root's home: pyenv's, say), or None."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        check = subprocess.run(
            [*AS_NOBODY, candidate, "-c", READABLE],
            env=_nobody_env(), capture_output=True, cwd="/tmp", timeout=60,
        )
        if check.returncode == 0:
            return candidate
    return None


def test_the_escape_suite_holds_unprivileged_as_nobody() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: the whole suite already runs unprivileged, test_sandbox.py too")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot switch to nobody")
    refusal = sandbox.userns_refusal()
    if refusal:
        pytest.skip(f"the kernel forbids unprivileged user namespaces: {refusal}")
    python = _interpreter()
    if python is None:
        pytest.skip(f"uid {NOBODY} cannot run a Python {sys.version_info[:2]} with this "
                    f"checkout and its packages (run the tests from a world-readable install)")
    probe = subprocess.run(
        [*AS_NOBODY, python, "-c",
         "import os; from simulators import sandbox; print(os.geteuid(), sandbox._probe())"],
        env=_nobody_env(), capture_output=True, text=True, cwd="/tmp", timeout=120,
    )
    assert probe.stdout.split() == [str(NOBODY), "None"], probe.stderr[-2000:]
    suite = subprocess.run(
        [*AS_NOBODY, python, "-m", "pytest", str(REPO / "tests" / "test_sandbox.py"), "-q",
         "-p", "no:cacheprovider", "--basetemp", f"/tmp/agentmill-nobody-{os.getpid()}"],
        env=_nobody_env(), capture_output=True, text=True, cwd="/tmp", timeout=600,
    )
    summary = suite.stdout.strip().splitlines()[-1] if suite.stdout.strip() else suite.stderr
    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 16 and "skipped" not in summary, summary


def test_a_refused_user_namespace_says_exactly_what_to_change(tmp_path: Path, monkeypatch) -> None:
    """Unprivileged, a bwrap that cannot make its namespace stops the run at start, naming the
    kernel setting and the command that allows it (or running as root)."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the "
        "kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: str(fake))
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(
        sandbox, "_read_sysctl",
        lambda name: "0" if name == "kernel/unprivileged_userns_clone" else None,
    )
    problem = sandbox._probe.__wrapped__()
    assert problem is not None
    assert "No permissions to creating new namespace" in problem
    assert "as uid 1000" in problem
    assert "kernel.unprivileged_userns_clone = 0 forbids unprivileged user namespaces" in problem
    assert "`sysctl -w kernel.unprivileged_userns_clone=1`" in problem and "as root" in problem
    # Another setting, another command; none set: the container case, and root, are named.
    monkeypatch.setattr(
        sandbox, "_read_sysctl",
        lambda name: "1" if name == "kernel/apparmor_restrict_unprivileged_userns" else None,
    )
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in (sandbox._probe.__wrapped__() or "")
    monkeypatch.setattr(sandbox, "_read_sysctl", lambda name: None)
    generic = sandbox._probe.__wrapped__() or ""
    assert "seccomp" in generic and "run agentmill as root" in generic
