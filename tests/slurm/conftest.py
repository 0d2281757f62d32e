"""A real Slurm cluster for the launcher tests: scripts/slurm_cluster/up.sh installs Debian's slurm and munge if
missing and starts munged, slurmctld and two slurmd "nodes" in network namespaces; down.sh ends it all after the
session, also when a test fails. Needs root (network namespaces); skipped with the reason otherwise.

Jobs inherit this process's environment (sbatch --export=ALL): OMP_NUM_THREADS=1 and DS_ACCELERATOR=cpu come from
tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.slurm.slurm_helpers import CLUSTER, PYTHON, REPO


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (network namespaces, mounts)")
    base = os.environ.get("M2DIST_SLURM_BASE", "/tmp/m2dist-slurm")
    env = {**os.environ, "M2DIST_SLURM_BASE": base}
    up = subprocess.run(["bash", str(CLUSTER / "up.sh")], env=env, capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, f"cluster bring-up failed:\n{up.stdout}\n{up.stderr}"
        conf = up.stdout.strip().splitlines()[-1]
        os.environ["SLURM_CONF"] = conf
        os.environ["PYTHONUNBUFFERED"] = "1"
        yield conf
    finally:
        subprocess.run(["bash", str(CLUSTER / "down.sh")], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> dict:
    """A tokenizer and a train split made by `m2dist prep` from its embedded sample corpus (in one process: ~20 s)."""
    root = tmp_path_factory.mktemp("slurm-data")
    script = (
        "import sys\n"
        "from m2dist.cli.main import main\n"
        f"r = {str(root)!r}\n"
        "for argv in (['prep', 'sample', '--output', r],\n"
        "             ['tokenizer', 'train', '--input', r + '/pile/train', '--format', 'pile', '--vocab-size', '512',\n"
        "              '--output', r + '/tok'],\n"
        "             ['prep', 'pile', '--input', r + '/pile/train', '--output', r + '/mds/pile', '--tokenizer',\n"
        "              r + '/tok.model', '--seq-len', '128', '--workers', '1']):\n"
        "    if main(argv):\n"
        "        sys.exit(f'failed: m2dist {\" \".join(argv)}')\n"
    )
    proc = subprocess.run([PYTHON, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"data prep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {"path": str(root / "mds" / "pile"), "tokenizer": str(root / "tok.model")}


@pytest.fixture(scope="session")
def train_overrides(smoke_data) -> list[str]:
    """Overrides that make the smoke config a short deterministic CPU run on the prepared data."""
    return [f"data.path={smoke_data['path']}", f"data.tokenizer={smoke_data['tokenizer']}", "trainer.device=cpu",
            "logging.every=1", "logging.tensorboard=false", "trainer.eval_every=0"]
