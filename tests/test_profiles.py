import pytest

from bplib.profiles import (
    CHAPTERS,
    DRYRUN_PROFILES,
    POSITIVE,
    PROFILE_NAMES,
    chapter_profiles,
    get_profile,
)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_defines_every_profile_with_the_same_keys(chapter):
    profiles = chapter_profiles(chapter)
    assert set(profiles) == set(PROFILE_NAMES) == {"smoke", "cpu", "paper", "gpu"}
    keys = {name: set(values) for name, values in profiles.items()}
    assert keys["smoke"] == keys["cpu"] == keys["paper"] == keys["gpu"]
    assert "seeds" in keys["smoke"]
    for name in PROFILE_NAMES:
        assert get_profile(chapter, name).profile == name


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_overrides_and_errors(chapter):
    with pytest.raises(ValueError, match="profile='fast'.*'smoke'"):
        get_profile(chapter, "fast")
    with pytest.raises(ValueError, match="no_such_knob.*allowed"):
        get_profile(chapter, "smoke", no_such_knob=3)
    with pytest.raises(ValueError, match="seeds"):
        get_profile(chapter, "smoke", seeds=[-1])
    assert get_profile(chapter, "smoke", seeds=[5, 6]).seeds == [5, 6]


def test_unknown_chapter():
    with pytest.raises(ValueError, match="chapter='optima'.*'minima'"):
        get_profile("optima", "smoke")


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_profile_value_passes_its_own_rule(chapter, profile):
    """The checks get_profile makes on overrides (issue 11) hold for the profiles' own values."""
    values = chapter_profiles(chapter)[profile]
    get_profile(chapter, profile, **{k: v for k, v in values.items() if k != "seeds"})
    keys = set().union(*(chapter_profiles(c)["smoke"] for c in CHAPTERS))
    assert POSITIVE <= keys, POSITIVE - keys  # no stale name in the positive-count list


# What a dry run may change: sizes, epochs, schedules inside them, seeds and measurement budgets.
# Models, widths, arms, learning rates and every other code-path switch stay the profile's.
DRYRUN_BUDGETS = {
    "n_train", "n_test", "epochs", "milestones", "linear_epochs", "linear_milestones",
    "lemma1_epochs", "lemma1_gd_epochs", "lemma1_milestones", "theorem_lbfgs_iters",
    "power_iters", "compare_power_iters", "lanczos_tol", "lanczos_ncv", "lanczos_max_hvp",
    "seeds", "n_images", "explorer_images", "base_images", "base_epochs", "finetune_images",
    "finetune_milestones", "rank_epochs", "n_robust", "max_elems",
    "batch_size", "batch_size_cifar100",  # 2 batches of 16: a size, no code path depends on it
    "samples",  # the NTK's image samples measured: the official one differs in images only
    "gd_epochs", "witness_epochs",  # phases that run stay run (1 epoch), absent ones stay absent
    "n_holdout",  # rank at gpu: 20 held-out images, not 5,000 (a size)
    "pilot_n_train", "pilot_epochs", "pilot_seeds", "arm_images",  # weight decay's pilot, budget
}  # fmt: skip
STANDIN_KEYS = {"datasets", "extra_datasets", "bases"}  # CIFAR-100 -> its offline stand-in


def _unstand(value):
    if isinstance(value, dict):
        return {k: _unstand(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unstand(v) for v in value]
    return "cifar100" if value == "cifar100_standin" else value


def _no_milestones(recipes: dict) -> dict:  # nor epochs: a dry run trains one
    cut = ("milestones", "epochs")
    return {f: {k: v for k, v in r.items() if k not in cut} for f, r in recipes.items()}


@pytest.mark.parametrize("profile", DRYRUN_PROFILES)
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_dry_run_keeps_the_profiles_models_and_code_paths(chapter, profile):
    paper, dry = (
        vars(get_profile(chapter, profile)),
        vars(get_profile(chapter, profile, dryrun=True)),
    )
    assert dry.pop("dryrun") is True and "dryrun" not in paper
    changed = {k for k in paper if dry[k] != paper[k]}
    for key in changed & STANDIN_KEYS:
        assert _unstand(dry[key]) == _unstand(paper[key]) and dry[key] != paper[key], key
    if "recipes" in changed:  # the per-family recipes lose their milestones only
        assert _no_milestones(dry["recipes"]) == _no_milestones(paper["recipes"])
    if "arms" in changed:  # rank: fewer thresholds, every projection op still run
        assert {k: {op for op, _ in v} for k, v in dry["arms"].items()} == {
            k: {op for op, _ in v} for k, v in paper["arms"].items()
        }
    if "arm_bases" in changed:  # rank: each op on one base, "none" on every base (the cover is
        assert (paper["arm_bases"], dry["arm_bases"]) == ("all", "dealt")  # tested in test_rank)
    assert not changed - DRYRUN_BUDGETS - STANDIN_KEYS - {"recipes", "arms", "arm_bases"}, changed
    assert dry["seeds"] == [0] and dry.get("epochs", 1) == 1
    assert all(r.get("epochs", 1) == 1 for r in dry.get("recipes", {}).values())
    for key in ("gd_epochs", "witness_epochs"):  # a phase the profile runs stays, for 1 epoch
        if key in paper:
            assert dry[key] == min(paper[key], 1), key


def test_dry_run_is_for_the_gpu_profiles_only():
    with pytest.raises(ValueError, match="dryrun=True.*profile='cpu'"):
        get_profile("rank", "cpu", dryrun=True)
    with pytest.raises(ValueError, match="dryrun"):
        get_profile("rank", "paper", dryrun="yes")
    assert not hasattr(get_profile("rank", "paper"), "dryrun")  # other keys unchanged


def test_one_overrides_dict_checked_by_one_validator():
    """A chapter's one ``overrides`` parameter goes through check_overrides (names, kinds, ranges)
    as keyword overrides do; anything but a dict or None is one clear error."""
    assert get_profile("rank", "smoke", overrides={"epochs": 3, "width": None}).epochs == 3
    assert get_profile("rank", "smoke", overrides=None) == get_profile("rank", "smoke")
    with pytest.raises(ValueError, match=r"overrides='epochs=3' of chapter 'rank' must be a dict"):
        get_profile("rank", "smoke", overrides="epochs=3")
    with pytest.raises(ValueError, match="unknown parameter.*epoch .*allowed"):
        get_profile("rank", "smoke", overrides={"epoch": 3})
    with pytest.raises(ValueError, match="epochs=0 .*integer >= 1"):
        get_profile("rank", "smoke", overrides={"epochs": 0})
    assert not any("jobs" in chapter_profiles(c)["paper"] for c in CHAPTERS)  # a Context field
