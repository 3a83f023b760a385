"""The dry runs' cheaper subset for CI (the whole is ``make paper-dryrun`` / ``make
gpu-dryrun``): one job of ``get_profile(<claim>, <profile>, dryrun=True)`` for the paper and the
gpu profile (the profile's model at its width and code path, 2 batches per training phase) run
to a record, on the CIFAR-100 stand-in where the profile has CIFAR-100. It fails on any crash,
shape or dtype error; its numbers mean nothing. CI runs the two cheap claims (~10 s of CPU per
job); the minima job (12.6M-parameter Hessian) and the rank job (ResNet-18 spectra) take about
a minute each and run with ``BPLIB_DRYRUN_ALL=1`` or in the make targets."""

import math
import os

import pytest

from bplib import claims, runner
from bplib.data import offline_dir
from bplib.profiles import DRYRUN_PROFILES, get_profile

pytestmark = pytest.mark.skipif(
    offline_dir() is None or not (offline_dir() / "cifar10.npz").exists(),
    reason="needs the offline CIFAR-10 folder (the dry run reads the paper's 50,000 images)",
)


def _floats(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            yield from _floats(v)
    elif isinstance(value, float):
        yield value


# The job each claim's dry run runs: the cheapest (by the claim's cost) matching the first of
# these param subsets that any of its jobs has, else its cheapest job (a new claim needs no
# entry). In turn: the Lemma-1 row (linear classifier, embedding, both fine-tune phases); the
# CIFAR-100 stand-in with norm-bias (its statistics and regularizer); the stand-in without BN and
# skips (He init with zero branches); a natural base. The gpu profile has no CIFAR-100: there,
# Fixup with the paper's norm-bias, and the widest WRN (its 11M-parameter kernel).
PICKS = (
    {"row": "lemma1"},
    {"dataset": "cifar100_standin", "model": "resnet20_fixup", "arm": "nb_below"},
    # weight decay at gpu: a pilot job (an arm job reads the pilot's records: the whole chapter
    # runs both waves in make gpu-dryrun)
    {"model": "resnet20_fixup", "phase": "pilot", "arm": "wd_strong"},
    {"dataset": "cifar100_standin", "family": "resnet18_noskip_nobn"},
    {"model": "resnet20_fixup", "arm": "nb_above"},
    {"family": "wrn16", "width": 8},
    {"phase": "base", "kind": "natural"},
)


def _pick(mod, jobs: list):
    for want in PICKS:
        if match := [j for j in jobs if want.items() <= j.params.items()]:
            return min(match, key=mod.cost)
    return min(jobs, key=mod.cost)


SLOW = {"minima", "rank"}
IN_CI = [n for n in claims.CLAIMS if n not in SLOW or os.environ.get("BPLIB_DRYRUN_ALL") == "1"]


@pytest.mark.parametrize("profile", DRYRUN_PROFILES)
@pytest.mark.parametrize("name", IN_CI)
def test_one_job_per_claim_and_gpu_profile_runs_to_a_record(name, profile, tmp_path):
    cfg = get_profile(name, profile, dryrun=True)
    mod = claims.claim(name)
    job = _pick(mod, mod.jobs(cfg))
    ctx = runner.Context(profile, device="cpu", root=tmp_path, checkpoints=tmp_path / "ck")
    (record,) = runner.run([job], mod.work, ctx, n_procs=1)
    assert record["params"] == {**job.params, "seed": job.seed}
    numbers = list(_floats(record["result"]))
    assert numbers and not any(math.isinf(v) for v in numbers)
    assert job.path(profile, tmp_path).exists() and not ctx.run_dir(job).parent.exists()
