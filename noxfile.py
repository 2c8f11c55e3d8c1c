"""Developer tasks. Sessions reuse the current environment (``venv_backend="none"``): set it up once with the
README's command, then ``nox -s lint tests``. ``nox -s gpu`` runs on a machine with an H100 (or any CUDA GPU)."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "none"

ROOT = Path(__file__).parent
PACKAGES = ["liteattn-core", "liteattn-triton", "liteattn-cuda", "liteattn-calib"]
GPU_PACKAGES = ["liteattn-core", "liteattn-triton", "liteattn-cuda"]


def _present(session: nox.Session) -> list[str]:
    return [name for name in PACKAGES if (ROOT / "packages" / name / "pyproject.toml").exists()]


def _install_packages(session: nox.Session, *, offline: bool = False) -> None:
    """Editable installs of our packages into the current environment (deps are the caller's business)."""
    import torch

    args = ["--no-build-isolation", "--no-deps"] + (["--no-index"] if offline else [])
    # Without a GPU the CUDA package installs its Python part only; its tests compile kernels themselves.
    env = {} if torch.cuda.is_available() else {"LITEATTN_CUDA_BUILD": "0"}
    for name in _present(session):
        session.run("python", "-m", "pip", "install", "-q", *args, "-e", f"packages/{name}", env=env, external=True)


def _pytest_each_package(session: nox.Session, *extra: str) -> None:
    # One pytest per package: the packages' test folders reuse module names (conftest, test_reference).
    for name in _present(session):
        tests = ROOT / "packages" / name / "tests"
        if not tests.is_dir():
            session.error(f"packages/{name} has no tests folder")
        # pytest exits 5 when it collects nothing, which nox reports as the failure it is.
        session.run("python", "-m", "pytest", str(tests), *extra, *session.posargs, external=True)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """Ruff over every package, the noxfile and the bench scripts."""
    session.run("python", "-m", "ruff", "check", ".", external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """CPU tests of every package (Triton kernels in the interpreter); extra arguments go to pytest."""
    _install_packages(session)
    _pytest_each_package(session, "-m", "not gpu", "-q")


@nox.session(venv_backend="none")
def parity(session: nox.Session) -> None:
    """Backend x dtype x head-dim parity matrix against the reference; skips what this machine cannot run."""
    session.run("python", "bench/parity.py", *session.posargs, external=True)


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors (``-- --serve`` to serve them afterwards)."""
    session.run("python", "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", external=True)
    if "--serve" in session.posargs:
        session.run("python", "-m", "http.server", "-d", "docs/_build/html", "8000", external=True)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: build the backends, run the GPU tests and the parity matrix, benchmark; logs and
    numbers go to bench/results/<date>-<gpu>/ (or $LITEATTN_RESULTS)."""
    import torch

    if not torch.cuda.is_available():
        session.error("the gpu session needs a CUDA device")
    gpu_name = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
    out = Path(os.environ.get("LITEATTN_RESULTS") or ROOT / "bench" / "results" / f"{datetime.date.today()}-{gpu_name}")
    out.mkdir(parents=True, exist_ok=True)
    _install_packages(session, offline=os.environ.get("LITEATTN_OFFLINE") == "1")
    # Each package's tests marked gpu (calibration's: the bisection rounds replayed as CUDA graphs).
    for name in (*GPU_PACKAGES, "liteattn-calib"):
        session.run("python", "-m", "pytest", f"packages/{name}/tests", "-m", "gpu", "-q", "-rs",
                    f"--junitxml={out}/gpu-tests-{name}.xml", success_codes=[0, 5], external=True)
    session.run("python", "bench/parity.py", "--steps", "4", "--json", str(out / "parity.json"), external=True)
    if "--no-bench" not in session.posargs and (ROOT / "bench" / "harness.py").exists():
        session.run("python", "bench/harness.py", "--out", str(out), external=True)
        session.run("python", "bench/calib_cost.py", "--json", str(out / "calib-cost.json"), external=True)


@nox.session(venv_backend="none")
def check_versions(session: nox.Session) -> None:
    """Fail when a package's liteattn-core requirement does not admit core's current version."""
    from packaging.requirements import Requirement

    core = (ROOT / "packages/liteattn-core/pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', core, re.M).group(1)
    for name in _present(session):
        text = (ROOT / "packages" / name / "pyproject.toml").read_text()
        for line in re.findall(r'"(liteattn-core[^"]*)"', text):
            requirement = Requirement(line)
            if not requirement.specifier.contains(version):
                session.error(f"{name} requires {requirement}, which excludes liteattn-core {version}")
    session.log(f"every package admits liteattn-core {version}")
