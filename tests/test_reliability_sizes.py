"""Issue 27, item 2: every size is checked against the data it counts (after the held-out split),
every percentage lies in 0-100, every attack radius in [0, 1] pixels, ``checkpoints`` is a folder
and ``width=0`` is refused as "a positive number", all before any work, naming the chapter's
parameter. On 61006c4 each of these was accepted (minima trained on 50,000 images and stored
``n_train=100000000``) or failed late under another name."""

import pytest

from bplib.book.batch import main
from bplib.profiles import CHAPTERS, DATA_SIZES, get_profile


@pytest.mark.parametrize(
    "chapter, profile, overrides, message",
    [
        # the data set's training images (minima: no held-out split)
        ("minima", "cpu", {"n_train": 100_000_000}, r"n_train=100000000 .*at most 50,000"),
        ("ntk", "smoke", {"n_train": 2001}, r"n_train=2001 .*2,000 training images of cif"),
        # after the held-out split (smoke: 500 of cifar10_small's 2,000 held out)
        ("weight_decay", "smoke", {"n_train": 1501}, r"n_train=1501 .*n_holdout=500.*1,500"),
        ("weight_decay", "smoke", {"n_holdout": 2000}, r"n_holdout=2000 .*at most 1,999"),
        ("rank", "smoke", {"base_images": {"natural": 1901, "adversarial": 8}}, r"base_images="),
        ("rank", "smoke", {"finetune_images": {"natural": 8, "adversarial": 1901}}, r"finetune_"),
        # the test split, and what is drawn from the other sizes
        ("ntk", "smoke", {"n_test": 1001}, r"n_test=1001 .*1,000 test images of cifar10_small"),
        ("rank", "smoke", {"n_robust": 201}, r"n_robust=201 .*n_test=200"),
        ("minima", "smoke", {"hessian_images": 257}, r"hessian_images=257 .*n_train=256"),
        ("ntk", "smoke", {"n_images": 129, "n_train": 2000}, r"n_images=129 .*official"),
        ("ntk", "smoke", {"explorer_images": 4}, r"explorer_images=4 .*n_images=3"),
        # percentages and pixel radii
        ("ntk", "smoke", {"min_train_acc": 250}, r"min_train_acc=250 .*<= 100 \(a percentage"),
        ("weight_decay", "smoke", {"gate_train_acc": 101}, r"gate_train_acc=101 .*<= 100"),
        ("rank", "smoke", {"gate": {"natural": {"test": 150}}}, r"gate=.*\(it holds 150\)"),
        ("rank", "smoke", {"train_eps": 5}, r"train_eps=5 .*<= 1 \(pixel units\)"),
        ("rank", "smoke", {"eval_eps": [1 / 255, 2]}, r"eval_eps=.*\(it holds 2\)"),
        ("rank", "smoke", {"width": 0}, r"width=0 .*width must be a positive number;"),
        ("ntk", "smoke", {"extra_datasets": {"mlp2": ["svhn"]}}, r"'svhn' is not a data set"),
    ],
)
def test_sizes_and_ranges_beyond_what_they_count_are_refused(chapter, profile, overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        get_profile(chapter, profile, overrides=overrides)
    assert err.match(f"of chapter '{chapter}' is not allowed")


def test_sizes_that_fit_pass():
    assert get_profile("rank", "smoke", overrides={"width": 0.125}).width == 0.125
    assert get_profile("weight_decay", "smoke", overrides={"n_train": 1500}).n_train == 1500
    assert get_profile("minima", "paper", overrides={"n_train": 50_000}).n_train == 50_000
    assert get_profile("ntk", "paper", overrides={"min_train_acc": 100}).min_train_acc == 100


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_profile_and_the_dry_run_fit_their_data(chapter):
    # The dry run's n_test=32 was clipped to the CIFAR-100 stand-in's 20 test images.
    for profile in ("smoke", "cpu", "paper"):
        get_profile(chapter, profile)
    get_profile(chapter, "paper", dryrun=True)


def test_data_sizes_name_every_data_set():
    pytest.importorskip("torch")
    from bplib import data

    assert set(DATA_SIZES) == set(data.DATASETS)
    assert DATA_SIZES["cifar100_standin"][0] == data.STANDIN_TRAIN


@pytest.mark.parametrize(
    "args, message",
    [
        (["minima", "-p", "n_train", "100000000"], "n_train=100000000 of chapter 'minima'"),
        (["rank", "-p", "train_eps", "5"], "train_eps=5 of chapter 'rank' is not allowed"),
        (["minima", "-p", "checkpoints", "5"], "checkpoints=5 must be a folder"),
        (["ntk", "-p", "data_dir", "3"], "data_dir=3 must be a folder"),
    ],
)
def test_bplib_run_refuses_them_before_any_notebook(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_context_checkpoints_must_be_a_folder():
    pytest.importorskip("torch")
    from bplib.runner import Context

    # Before: TypeError: expected str, bytes or os.PathLike object, not int
    with pytest.raises(ValueError, match=r"checkpoints=5 must be a folder \(a string or path\)"):
        Context("smoke", checkpoints=5)
    assert str(Context("smoke", checkpoints="ck").checkpoints) == "ck"


def test_a_test_split_smaller_than_n_test_is_refused_not_clipped():
    """The offline copy holds the first 1,000 test images; n_test=10,000 used to slice quietly
    to 1,000 while the record kept n_test=10000. Now the chapter stops, naming the parameter."""
    import torch

    from bplib.data import CifarData

    x, y = torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.arange(3)
    data = CifarData(x, y, x, y, ["a", "b", "c"], "synthetic", "synthetic test, 3 images")
    assert len(data.first_test(None)[0]) == 3 and len(data.first_test(2)[1]) == 2
    with pytest.raises(ValueError, match=r"n_test=5 asks for more test images .* \(3\)"):
        data.first_test(5)


def test_rank_attacks_no_fewer_images_than_n_robust_says():
    import torch

    from bplib.claims import rank

    x, y = torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    p = {"n_robust": 5, "eval_eps": [1 / 255]}
    with pytest.raises(ValueError, match="n_robust=5 exceeds the 2 test images"):
        rank.robust_bits(torch.nn.Identity(), x, y, torch.ones(2, dtype=torch.bool), p)
