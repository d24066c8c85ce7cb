"""Profile gating and GPU bounds (casa_hub.profiles): pure, exact dicts and exact messages."""

from __future__ import annotations

import copy

import pytest

from casa_hub import profiles
from casa_hub.profiles import ProfileRefused

GPU = profiles.gpu_profile(
    "gpu",
    "GPU",
    gpus=[1, 4],
    mig=["1g.5gb"],
    allowed_groups=["gpu-users", "gpu-power"],
    choice_groups={"4": ["gpu-power"]},
    description="A100",
)
PROFILES = [{"display_name": "CPU", "slug": "cpu", "default": True}, GPU]


def test_gpu_profile_exact():
    assert GPU == {
        "display_name": "GPU",
        "slug": "gpu",
        "description": "A100",
        "casa_allowed_groups": ["gpu-power", "gpu-users"],
        "kubespawner_override": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "profile_options": {
            "gpus": {
                "display_name": "GPUs",
                "choices": {
                    "1": {
                        "display_name": "1 GPU",
                        "default": True,
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "1"}},
                    },
                    "4": {
                        "display_name": "4 GPUs",
                        "casa_allowed_groups": ["gpu-power"],
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "4"}},
                    },
                    "mig-1g.5gb": {
                        "display_name": "MIG slice 1g.5gb",
                        "kubespawner_override": {"extra_resource_limits": {"nvidia.com/mig-1g.5gb": "1"}},
                    },
                },
            }
        },
    }


def test_gpu_profile_custom_node_placement_and_refusals():
    p = profiles.gpu_profile(
        "t4", "T4", gpus=[1], node_selector={"gpu": "t4"}, tolerations=[], kubespawner_override={"cpu_limit": 4}
    )
    assert p["kubespawner_override"] == {"node_selector": {"gpu": "t4"}, "tolerations": [], "cpu_limit": 4}
    assert "casa_allowed_groups" not in p
    with pytest.raises(ValueError, match="at least one"):
        profiles.gpu_profile("none", "None", gpus=[])
    with pytest.raises(ValueError, match="not a GPU resource"):
        profiles.gpu_choice("x", {"cpu": 1})
    with pytest.raises(ValueError, match="not a GPU resource"):
        profiles.gpu_choice("x", {"nvidia.com/gpu": 0})


def test_visible_profiles_filter_profiles_and_choices_by_group():
    before = copy.deepcopy(PROFILES)
    assert [p["slug"] for p in profiles.visible_profiles(PROFILES, ["cms"])] == ["cpu"]
    cpu, gpu = profiles.visible_profiles(PROFILES, ["gpu-users"])
    assert list(gpu["profile_options"]["gpus"]["choices"]) == ["1", "mig-1g.5gb"]
    assert "casa_allowed_groups" not in gpu
    _, power = profiles.visible_profiles(PROFILES, ["gpu-power"])
    assert list(power["profile_options"]["gpus"]["choices"]) == ["1", "4", "mig-1g.5gb"]
    assert all("casa_allowed_groups" not in c for c in power["profile_options"]["gpus"]["choices"].values())
    assert PROFILES == before  # the configuration itself is never modified


def test_a_profile_left_without_choices_is_hidden():
    only_big = profiles.gpu_profile("big", "Big", gpus=[8], choice_groups={"8": ["gpu-power"]})
    assert profiles.visible_profiles([only_big], ["gpu-users"]) == []


def _initialized(profile_list):
    """What KubeSpawner's _get_initialized_profile_list adds that the checks rely on (slugs, defaults)."""
    out = copy.deepcopy(profile_list)
    for p in out:
        for option in p.get("profile_options", {}).values():
            option.setdefault("unlisted_choice", {"enabled": False})
    return out


@pytest.mark.parametrize(
    "groups,options,message",
    [
        (["cms"], {"profile": "gpu"}, "The profile 'gpu' is not available to your account; you may choose: cpu."),
        (["cms"], {"profile": "nope"}, "There is no profile 'nope'."),
        (
            ["gpu-users"],
            {"profile": "gpu", "gpus": "4"},
            "4 GPUs is not available to your account; for GPUs you may choose: 1, mig-1g.5gb.",
        ),
        (
            ["gpu-users"],
            {"profile": "gpu", "gpus": "3"},
            "'3' is not a choice for GPUs in profile 'gpu'; choose one of: 1, mig-1g.5gb.",
        ),
        (
            ["gpu-users"],
            {"profile": "gpu", "gpus": ["1"]},
            "\"['1']\" is not a choice for GPUs in profile 'gpu'; choose one of: 1, mig-1g.5gb.",
        ),
        (
            ["gpu-users"],
            {"profile": "gpu", "gpus--unlisted-choice": "64"},
            "GPUs in profile 'gpu' takes no value of your own; choose one of: 1, mig-1g.5gb.",
        ),
    ],
)
def test_tampered_options_are_refused_with_a_clear_message(groups, options, message):
    everything = _initialized(PROFILES)
    visible = _initialized(profiles.visible_profiles(PROFILES, groups))
    with pytest.raises(ProfileRefused) as e:
        profiles.check_user_options(everything, visible, options)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "groups,options",
    [
        (["cms"], {}),
        (["cms"], {"profile": "cpu"}),
        (["gpu-users"], {"profile": "gpu"}),
        (["gpu-users"], {"profile": "gpu", "gpus": "mig-1g.5gb"}),
        (["gpu-power"], {"profile": "gpu", "gpus": "4"}),
    ],
)
def test_allowed_options_pass(groups, options):
    profiles.check_user_options(
        _initialized(PROFILES), _initialized(profiles.visible_profiles(PROFILES, groups)), options
    )


def test_an_enabled_unlisted_choice_is_accepted():
    p = profiles.gpu_profile("gpu", "GPU")
    p["profile_options"]["gpus"]["unlisted_choice"] = {"enabled": True}
    profiles.check_user_options([p], [p], {"profile": "gpu", "gpus--unlisted-choice": "2"})


@pytest.mark.parametrize(
    "limits,cap,total",
    [
        ({"nvidia.com/gpu": "2"}, 4, 2),
        ({"nvidia.com/gpu": "2", "nvidia.com/mig-1g.5gb": 2}, 4, 4),
        ({"cpu": "64", "memory": "1Ti"}, 0, 0),
        ({}, 0, 0),
    ],
)
def test_gpu_limits_within_the_cap(limits, cap, total):
    assert sum(profiles.check_gpu_limits(limits, cap).values()) == total


@pytest.mark.parametrize(
    "limits,message",
    [
        (
            {"nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": "3"},
            "This server asks for 5 GPU(s); the facility allows at most 4 per server.",
        ),
        ({"nvidia.com/gpu": "-1"}, "This server asks for -1 GPU(s); the facility allows at most 4 per server."),
        ({"nvidia.com/gpu": "many"}, "Invalid GPU count 'many' for nvidia.com/gpu."),
    ],
)
def test_gpu_limits_refused(limits, message):
    with pytest.raises(ProfileRefused) as e:
        profiles.check_gpu_limits(limits, 4)
    assert str(e.value) == message


def test_cap_is_the_largest_of_the_users_groups():
    caps = {"gpu-users": 2, "gpu-power": 8}
    assert profiles.max_gpus_for(["cms"], 1, caps) == 1
    assert profiles.max_gpus_for(["gpu-users"], 1, caps) == 2
    assert profiles.max_gpus_for(["gpu-users", "gpu-power"], 1, caps) == 8
    assert profiles.max_gpus_for(["gpu-users"], 4, {"gpu-users": 0}) == 0  # a group cap can also lower it


def test_offers_gpus():
    assert profiles.offers_gpus(GPU) and not profiles.offers_gpus(PROFILES[0])
    assert profiles.offers_gpus({"kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "1"}}})


NODES = [
    {
        "metadata": {"name": "a"},
        "status": {"allocatable": {"nvidia.com/gpu": "4", "nvidia.com/mig-1g.5gb": "7", "cpu": "32"}},
    },
    {"metadata": {"name": "b"}, "spec": {"unschedulable": True}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}},
    {"metadata": {"name": "c"}, "status": {"allocatable": {"cpu": "8"}}},
]


def _pod(node, phase="Running", **resources):
    return {
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": resources}]},
        "status": {"phase": phase},
    }


def test_free_resources_is_allocatable_minus_requests():
    pods = [
        _pod("a", limits={"nvidia.com/gpu": "1"}),  # requests default to limits
        _pod("a", requests={"nvidia.com/mig-1g.5gb": "2"}, limits={"nvidia.com/mig-1g.5gb": "2"}),
        _pod(None, phase="Pending", limits={"nvidia.com/gpu": "1"}),  # not scheduled yet: counted
        _pod("a", phase="Succeeded", limits={"nvidia.com/gpu": "2"}),  # finished: not counted
        _pod("b", limits={"nvidia.com/gpu": "8"}),  # cordoned node: neither side
        {"metadata": {"name": "odd"}},
    ]
    assert profiles.free_resources(NODES, pods) == {"nvidia.com/gpu": 2, "nvidia.com/mig-1g.5gb": 5}
    assert profiles.free_gpus(NODES, pods) == 2
    assert profiles.free_gpus(NODES, pods, "nvidia.com/mig-1g.5gb") == 5
    assert profiles.free_resources(NODES, [_pod("a", limits={"nvidia.com/gpu": "9"})])["nvidia.com/gpu"] == 0


def test_describe_availability():
    assert (
        profiles.describe_availability({"nvidia.com/mig-1g.5gb": 5, "nvidia.com/gpu": 1})
        == "1 GPU, 5 × MIG 1g.5gb free now"
    )
    assert profiles.describe_availability({"nvidia.com/gpu": 0}) == "0 GPUs free now"
    assert profiles.describe_availability({}) == ""


# ------------------------------------------------------------------ KubeSpawner's profile rules, without its privates
def test_initialized_profiles_complete_slugs_and_defaults_and_leave_the_input_alone():
    raw = [
        {"display_name": "Small CPU"},
        {"display_name": "Pick", "slug": "pick", "profile_options": {"img": {"choices": {"a": {}, "b": {}}}}},
        {"display_name": "Own", "slug": "own", "profile_options": {"img": {"unlisted_choice": {"enabled": True}}}},
    ]
    before = copy.deepcopy(raw)
    assert profiles.initialized_profiles(raw) == [
        {"display_name": "Small CPU", "slug": "small-cpu", "default": True},
        {
            "display_name": "Pick",
            "slug": "pick",
            "profile_options": {
                "img": {"choices": {"a": {"default": True}, "b": {}}, "unlisted_choice": {"enabled": False}}
            },
        },
        {
            "display_name": "Own",
            "slug": "own",
            "profile_options": {"img": {"unlisted_choice": {"enabled": True, "display_name_in_choices": "Other..."}}},
        },
    ]
    assert raw == before


def test_initialized_profiles_match_kubespawners_own_reading():
    """The same rules as KubeSpawner 7's own (private) initialisation: a drift check, in the test only."""
    from kubespawner import KubeSpawner

    raw = [GPU, {"display_name": "CPU only"}, {"display_name": "X", "slug": "x", "default": True}]
    assert profiles.initialized_profiles(raw) == KubeSpawner._get_initialized_profile_list(None, raw)


@pytest.mark.parametrize(
    "groups,options,completed",
    [
        # the configured default (GPU) is not this user's: their default is the first profile they see
        (["cms"], {}, {"profile": "cpu"}),
        # a GPU user gets the GPU default with its default choice made explicit
        (["gpu-users"], {}, {"profile": "gpu", "gpus": "1"}),
        (["gpu-users"], {"profile": "gpu", "gpus": "mig-1g.5gb"}, {"profile": "gpu", "gpus": "mig-1g.5gb"}),
        (["gpu-users"], {"profile": "cpu"}, {"profile": "cpu"}),
    ],
)
def test_complete_user_options_makes_the_users_own_defaults_explicit(groups, options, completed):
    gpu_first = [dict(GPU, default=True), {"display_name": "CPU", "slug": "cpu"}]
    visible = profiles.initialized_profiles(profiles.visible_profiles(gpu_first, groups))
    assert profiles.complete_user_options(visible, options) == completed


def test_complete_user_options_refuses_a_user_without_any_profile():
    with pytest.raises(ProfileRefused, match="No server profile is available to your account"):
        profiles.complete_user_options([], {})
