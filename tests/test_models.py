"""Model zoo: shapes, backward, exact parameter counts (paper.md), variants and registry errors."""

import pytest
import torch
from torch import nn

from bplib.data import Normalize
from bplib.models import (
    MLP,
    MODELS,
    BasicBlock,
    ConvNet,
    FixupResNet,
    ResNet,
    block_convs,
    count_parameters,
    make_model,
    resnet18,
    unwrap,
    wrn16,
)


def _x(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g)


# Small settings of each registered net keep the whole file fast on a shared 2-core CPU; the
# full-size nets are built (and counted) below, and run forward once in test_defaults_forward.
SMALL = {
    "mlp": dict(widths=(16, 8)),
    "convnet": dict(width=2),
    "resnet18": dict(width=0.125),
    "resnet20_fixup": {},
    "wrn16": dict(k=1),
    "mobilenetv2": dict(width=0.25),
    "densenet40": dict(growth_rate=4),
}


def test_small_settings_cover_registry():
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_backward(name, num_classes):
    torch.manual_seed(0)
    model = make_model(name, num_classes=num_classes, **SMALL[name])
    out = model(_x())
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_defaults_forward(name):
    model = make_model(name, normalize=False).eval()
    with torch.no_grad():
        assert model(_x()).shape == (2, 10)


# ----------------------------------------------------------------------- parameter counts
def test_resnet18_count():
    assert count_parameters(make_model("resnet18")) == 11_173_962
    assert count_parameters(resnet18()) == 11_173_962


@pytest.mark.parametrize(
    "k, count",
    [(1, 175_626), (2, 692_810), (4, 2_751_146), (8, 10_965_866), (10, 17_122_250)],
)
def test_wrn16_counts(k, count):
    assert count_parameters(wrn16(k=k)) == count


def test_wrn16_fractional_k_narrows_every_stage():
    net = wrn16(k=0.25)  # 4, 8, 16 channels after the 16-channel stem
    assert [s[0].conv1.out_channels for s in (net.layer1, net.layer2, net.layer3)] == [4, 8, 16]
    assert count_parameters(net) == 12_326 and net(_x()).shape == (2, 10)
    with pytest.raises(ValueError, match="k"):
        wrn16(k=0)


@pytest.mark.parametrize("w", [1, 5, 100, 1000])
def test_mlp_counts(w):
    assert count_parameters(MLP([w])) == 3083 * w + 10
    assert count_parameters(MLP([w, w, w])) == 2 * w**2 + 3085 * w + 10


def test_mlp_chapter1_count():
    assert count_parameters(make_model("mlp")) == 12_598_282
    assert count_parameters(MLP([2048, 2048, 1024])) == 12_598_282


@pytest.mark.parametrize("w", [1, 3, 16, 64])
def test_convnet_counts(w):
    assert count_parameters(ConvNet(width=w)) == 270 * w**2 + 400 * w + 10


def test_other_default_counts():
    # Not in the paper; pinned so that a change to an architecture is noticed.
    assert count_parameters(make_model("resnet20_fixup")) == 268_393
    assert count_parameters(make_model("mobilenetv2")) == 2_296_922
    assert count_parameters(make_model("densenet40")) == 180_082
    assert count_parameters(make_model("densenet40", pool_size=1)) == 176_122


def test_count_parameters_trainable_only():
    net = MLP([4])
    net.layers[0].weight.requires_grad_(False)
    assert count_parameters(net) == 3083 * 4 + 10 - 3072 * 4


# ----------------------------------------------------------------------- structure
def test_mlp_layers_and_preactivations():
    net = MLP([6, 5, 4])
    assert isinstance(net.layers, nn.ModuleList)
    assert [(m.in_features, m.out_features) for m in net.layers] == [
        (3072, 6),
        (6, 5),
        (5, 4),
        (4, 10),
    ]
    x = _x()
    pre = net.preactivations(x)
    assert [p.shape[1] for p in pre] == [6, 5, 4]
    torch.testing.assert_close(net.layers[-1](pre[-1].relu()), net(x))
    assert len(MLP([]).layers) == 1  # linear classifier


def test_convnet_structure():
    net = ConvNet(width=2)
    convs = net.convs
    assert [c.out_channels for c in convs] == [2, 4, 4, 8, 8]
    assert all(c.kernel_size == (3, 3) and c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == 2
    assert net.features(_x()).shape == (2, 8, 3, 3)


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, BasicBlock)]


def test_resnet_skipless_has_no_shortcut():
    net = resnet18(skip=False, width=0.125)
    assert len(_blocks(net)) == 8
    assert all(b.shortcut is None for b in _blocks(net))
    one_by_one = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert one_by_one == []
    assert not any(isinstance(m, nn.Identity) for m in net.modules())
    # with skips: 3 projection shortcuts (stages 2-4) and 5 identities
    shortcuts = [b.shortcut for b in _blocks(resnet18(width=0.125))]
    assert sum(isinstance(s, nn.Sequential) for s in shortcuts) == 3
    assert sum(isinstance(s, nn.Identity) for s in shortcuts) == 5


@pytest.mark.parametrize("skip", [True, False])
def test_resnet_norm_none_has_no_batchnorm(skip):
    net = resnet18(norm="none", skip=skip, width=0.125)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    bn_net = resnet18(width=0.125)
    assert all(m.bias is None for m in bn_net.modules() if isinstance(m, nn.Conv2d))
    assert net(_x()).shape == (2, 10)


def test_resnet_init_default_unchanged_he_zero_blocks_start_as_their_shortcut():
    torch.manual_seed(0)
    before = resnet18(width=0.125, norm="none").state_dict()
    torch.manual_seed(0)
    same = resnet18(width=0.125, norm="none", init="default").state_dict()
    assert all(torch.equal(before[k], same[k]) for k in before)  # the default draws nothing more
    net = resnet18(width=0.125, norm="none", init="he_zero")
    assert count_parameters(net) == count_parameters(resnet18(width=0.125, norm="none"))
    block = net.layer1[0]  # identity shortcut: at init the block is relu(x) = x for x >= 0
    x = torch.rand(2, block.conv1.in_channels, 8, 8)
    torch.testing.assert_close(block(x), x)
    assert all(float(b.conv2.weight.detach().abs().sum()) == 0 for b in _blocks(net))
    fan_in = block.conv1.weight[0].numel()
    assert float(block.conv1.weight.detach().std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.2)
    plain = resnet18(width=0.125, norm="none", skip=False, init="he_zero")
    assert all(float(b.conv2.weight.detach().abs().sum()) > 0 for b in _blocks(plain))
    he = resnet18(width=0.125, norm="none", init="he")
    assert all(float(b.conv2.weight.detach().abs().sum()) > 0 for b in _blocks(he))
    with pytest.raises(ValueError, match="init"):
        make_model("resnet18", init="fixup")


def test_resnet_width():
    net = resnet18(width=0.5)
    assert [s[0].conv1.out_channels for s in net.stages] == [32, 64, 128, 256]
    assert net.conv1.out_channels == 32
    assert resnet18(width=0.001).linear.in_features == 1


def test_block_convs():
    for skip in (True, False):
        convs = list(block_convs(make_model("resnet18", skip=skip, width=0.125)))
        assert len(convs) == 16
        assert all(c.kernel_size == (3, 3) for c in convs)
    net = resnet18(width=0.125)
    assert net.conv1 not in list(block_convs(net))
    assert list(block_convs(net))[:2] == [net.layer1[0].conv1, net.layer1[0].conv2]
    assert len(list(block_convs(make_model("resnet20_fixup")))) == 18


def test_fixup_init_and_output_zero():
    torch.manual_seed(0)
    model = make_model("resnet20_fixup")
    net = unwrap(model)
    assert isinstance(net, FixupResNet)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert all(b.conv2.weight.abs().sum() == 0 for b in net.modules() if hasattr(b, "scale"))
    assert net.fc.weight.abs().sum() == 0 and net.fc.bias.abs().sum() == 0
    std = net.layer1[0].conv1.weight.std().item()
    expected = (2 / (16 * 9)) ** 0.5 * 9**-0.5
    assert abs(std - expected) / expected < 0.1
    out = model(_x())
    assert torch.equal(out, torch.zeros(2, 10))
    # It does train: one SGD step on cross-entropy moves the output off zero.
    y = torch.tensor([1, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(out, y).backward()
    opt.step()
    assert model(_x()).abs().sum() > 0


def test_wrn_dropout_and_depth():
    net = make_model("wrn16", k=2, dropout=0.3, normalize=False)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in net.modules())
    with pytest.raises(ValueError, match="depth"):
        from bplib.models import WideResNet

        WideResNet(depth=15)


# ----------------------------------------------------------------------- registry
def test_make_model_normalize_and_unwrap():
    torch.manual_seed(0)
    model = make_model("resnet18", width=0.125)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    net = unwrap(model)
    assert isinstance(net, ResNet) and net is model[1]
    x = _x()
    model.eval()
    torch.testing.assert_close(model(x), net(Normalize()(x)))
    bare = make_model("resnet18", width=0.125, normalize=False)
    assert isinstance(bare, ResNet) and unwrap(bare) is bare
    assert isinstance(unwrap(make_model("mlp", widths=[3])).layers, nn.ModuleList)
    custom = Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert make_model("convnet", width=1, normalize=custom)[0] is custom


def test_make_model_errors():
    with pytest.raises(ValueError, match="name") as err:
        make_model("resnet19")
    for name in MODELS:
        assert name in str(err.value)
    with pytest.raises(TypeError, match="widht"):
        make_model("resnet18", widht=2)
    with pytest.raises(TypeError, match="depth"):
        make_model("wrn16", depth=28)
    with pytest.raises(ValueError, match="norm"):
        make_model("resnet18", norm="layernorm")
    with pytest.raises(ValueError, match="width"):
        make_model("convnet", width=0)
    with pytest.raises(ValueError, match="widths"):
        MLP(100)
