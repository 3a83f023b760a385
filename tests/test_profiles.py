import pytest

from bplib.profiles import CHAPTERS, POSITIVE, PROFILE_NAMES, chapter_profiles, get_profile


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_defines_three_profiles_with_the_same_keys(chapter):
    profiles = chapter_profiles(chapter)
    assert set(profiles) == set(PROFILE_NAMES)
    keys = {name: set(values) for name, values in profiles.items()}
    assert keys["smoke"] == keys["cpu"] == keys["paper"]
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
