"""Profile gating by group, GPU bounds and free-GPU counts (pure; the Kubernetes builders are tested exactly in
tests/hub/test_objects.py)."""

from __future__ import annotations

import pytest

from casa_hub import profiles

PROFILES = [
    {"display_name": "CPU", "slug": "cpu"},
    {
        "display_name": "GPU",
        "slug": "gpu",
        "casa_allowed_groups": ["gpu-users"],
        "profile_options": {
            "n": {"choices": {"one": {"kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "1"}}}}}
        },
    },
]


def test_visible_profiles_by_group():
    assert [p["slug"] for p in profiles.visible_profiles(PROFILES, ["cms"])] == ["cpu"]
    visible = profiles.visible_profiles(PROFILES, ["gpu-users"])
    assert [p["slug"] for p in visible] == ["cpu", "gpu"]
    assert "casa_allowed_groups" not in visible[1] and "casa_allowed_groups" in PROFILES[1]  # input untouched


def test_profile_choice_refusals():
    visible = profiles.visible_profiles(PROFILES, ["cms"])
    profiles.check_profile_choice(PROFILES, visible, "cpu")
    with pytest.raises(profiles.ProfileRefused, match="not available to your account"):
        profiles.check_profile_choice(PROFILES, visible, "gpu")
    with pytest.raises(profiles.ProfileRefused, match="no profile"):
        profiles.check_profile_choice(PROFILES, visible, "../etc")


@pytest.mark.parametrize(
    "limits,ok",
    [
        ({"nvidia.com/gpu": "2"}, True),
        ({"nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": "3"}, False),
        ({"nvidia.com/gpu": "-1"}, False),
        ({"cpu": "64"}, True),
        ({"nvidia.com/gpu": "many"}, False),
    ],
)
def test_gpu_limits_bounded(limits, ok):
    if ok:
        profiles.check_gpu_limits(limits, 4)
    else:
        with pytest.raises(profiles.ProfileRefused):
            profiles.check_gpu_limits(limits, 4)


def test_offers_gpus_and_free_count():
    assert profiles.offers_gpus(PROFILES[1]) and not profiles.offers_gpus(PROFILES[0])
    nodes = [
        {"metadata": {"name": "a"}, "status": {"allocatable": {"nvidia.com/gpu": "4"}}},
        {
            "metadata": {"name": "b"},
            "spec": {"unschedulable": True},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        },
    ]
    pods = [
        {
            "spec": {"nodeName": "a", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Running"},
        },
        {
            "spec": {"nodeName": "a", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
            "status": {"phase": "Succeeded"},
        },
    ]
    assert profiles.free_gpus(nodes, pods) == 3
