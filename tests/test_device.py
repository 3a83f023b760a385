"""Every job of every claim runs on the device it is given (issue 12, item 1).

A CPU-only machine has one real device, so a job that ignored ``device`` would pass unseen. Here
each claim's smoke jobs run on a device stand-in (``tests/device_standin.py``): a tensor left on
the CPU while its model is on the stand-in raises, as on CUDA; matrix products or convolutions
computed on the CPU are counted; every module call's parameters and inputs are recorded."""

import pytest
import torch
from device_standin import watch

from bplib import runner
from bplib.claims import CLAIMS, run
from bplib.data import offline_dir
from bplib.measures.ntk import Linearized
from bplib.profiles import get_profile


def test_the_stand_in_catches_a_model_left_on_the_cpu_and_work_done_there():
    """The checks below can fail: mixing devices raises; host work is counted."""
    with watch() as seen:
        net = torch.nn.Linear(4, 2)  # never moved: on the CPU
        x = torch.zeros(3, 4, device="standin")
        with pytest.raises(RuntimeError, match="same device"):
            net(x)
        net(torch.zeros(3, 4))  # a job that ignored its device entirely
    assert seen.mixed and seen.host_compute
    assert ("Linear", "cpu") in seen.module_devices


def test_the_stand_in_computes_like_the_cpu_and_serves_host_reads():
    torch.manual_seed(0)
    net, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    expected = net(x).sum()
    with watch() as seen:
        moved = net.to("standin")
        out = moved(x.to("standin")).sum()
        assert out.device.type == "standin" and moved.weight.device.type == "standin"
        assert out.item() == pytest.approx(expected.item())  # a host read, as on a GPU
        out.backward()
        assert moved.weight.grad.device.type == "standin"
    assert not seen.mixed and not seen.host_compute and seen.standin_compute


@pytest.mark.parametrize("name", CLAIMS)
def test_every_smoke_job_of_every_claim_runs_on_the_device_it_is_given(name, tmp_path):
    """All smoke jobs (every job kind of the claim), through the runner, on the stand-in: no op
    mixes devices, no matrix product or convolution runs on the CPU, every module call has its
    parameters and inputs on the stand-in, and each record's provenance names it."""
    if offline_dir() is None:
        pytest.skip("offline CIFAR-10 not found: set BPLIB_DATA")
    # The linearized model runs forward-mode AD, which the stand-in cannot: see the next test.
    cfg = get_profile(name, "smoke", **({"linearize": []} if name == "ntk" else {}))
    ctx = runner.Context("smoke", device="standin", root=tmp_path / "records",
                         checkpoints=tmp_path / "checkpoints", jobs=1)  # fmt: skip
    with watch() as seen:
        records = run(name, cfg, ctx)
    assert not seen.mixed
    assert not seen.host_compute, (seen.host_compute, seen.where)
    assert seen.standin_compute and seen.module_devices
    assert {device for _, device in seen.module_devices} == {"standin"}, seen.module_devices
    assert {r["provenance"]["device"] for r in records} == {"standin"}


def test_the_linearized_model_is_held_where_its_network_is():
    """The NTK chapter's linearized model (forward-mode AD, out of the stand-in's reach) keeps
    its parameters and its copy of theta_0 on the network's device."""
    with watch():
        lin = Linearized(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).to("standin"))
        tensors = [*lin.parameters(), *lin.buffers()]
    assert tensors and {t.device.type for t in tensors} == {"standin"}
