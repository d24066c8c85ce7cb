"""Spawn forms, API spawn options and Dask cluster options fuzzed -> accepted within what the admin listed for
the user's groups, or refused with the documented user-facing error; never a crash, never an escalation.

(a) CasaSpawner.load_user_options after options_from_form (form) or with any JSON object (REST API). The
    refusal is a ``SpawnRefused`` with a 4xx ``status_code`` and a ``jupyterhub_message`` for the user.
    No escalation is checked against an expectation computed here from PROFILES alone (not with Casa's code).
(b) OptionsSpec.validate (casa_hub_ext.options): a ClusterOptions within the declared bounds, or an
    OptionError (4xx) naming the problem.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from casa_hub.errors import SpawnRefused
from casa_hub.profiles import gpu_profile
from casa_hub_ext.errors import OptionError
from casa_hub_ext.gpu import GPU, Inventory
from casa_hub_ext.options import CasaClusterSettings, ClusterOptions, OptionsSpec

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

MAX_GPUS, GPU_CAPS = 4, {"gpu-power": 8, "gpu-tiny": 1}
PROFILES = [
    {
        "display_name": "CPU",
        "slug": "cpu",
        "default": True,
        "kubespawner_override": {"cpu_limit": 2},
        "profile_options": {
            "image": {
                "display_name": "Image",
                "choices": {
                    "base": {"display_name": "Base", "default": True, "kubespawner_override": {"image": "reg/base:1"}},
                    "ml": {"display_name": "ML", "kubespawner_override": {"image": "reg/ml:1"}},
                },
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Other",
                    "validation_regex": r"^reg/[a-z]+:[0-9]+$",
                    "kubespawner_override": {"image": "{value}"},
                },
            }
        },
    },
    gpu_profile(
        "gpu",
        "GPU",
        gpus=[1, 2, 8],
        mig=["1g.5gb"],
        allowed_groups=["gpu-users", "gpu-power", "gpu-tiny"],
        choice_groups={"8": ["gpu-power"], "2": ["gpu-users", "gpu-power", "gpu-tiny"]},
    ),
    # the default choice is restricted: users outside gpu-power must not fall through to it
    gpu_profile(
        "mig",
        "MIG",
        gpus=[],
        mig=["3g.20gb", "1g.5gb"],
        allowed_groups=["gpu-users", "gpu-power"],
        choice_groups={"mig-3g.20gb": ["gpu-power"]},
    ),
    {
        "display_name": "Admin big",
        "slug": "big",
        "casa_allowed_groups": ["admins"],
        "kubespawner_override": {"cpu_limit": 64, "extra_resource_limits": {"nvidia.com/gpu": "8"}},
    },
]
DEFAULT_IMAGE = "registry.example.org/casa/notebook:test"  # the spawner's image where no override sets one
GROUPS = ["cms", "gpu-users", "gpu-power", "gpu-tiny", "admins"]


# ------------------------------------------------------------------ the expectation, from PROFILES alone
def _allowed(item: dict, groups: set) -> bool:
    return not item.get("casa_allowed_groups") or bool(groups & set(item["casa_allowed_groups"]))


def gpu_cap(groups: set) -> int:
    caps = [GPU_CAPS[g] for g in groups if g in GPU_CAPS]
    return max(caps) if caps else MAX_GPUS


def permitted_outcomes(groups: set) -> list[dict]:
    """Every (profile, GPU limits, image) a user in ``groups`` may end up with: a profile they may see, with a
    choice they may pick for each option (or a valid unlisted image), within their GPU cap."""
    out = []
    for p in PROFILES:
        if not _allowed(p, groups):
            continue
        base = {
            "cpu_limit": p["kubespawner_override"].get("cpu_limit"),
            "gpus": {k: int(v) for k, v in p["kubespawner_override"].get("extra_resource_limits", {}).items()},
        }
        options = p.get("profile_options", {})
        if not options:
            out.append({**base, "image": None})
        for option in options.values():
            for choice in option["choices"].values():
                if _allowed(choice, groups):
                    o = choice.get("kubespawner_override", {})
                    out.append(
                        {
                            **base,
                            "image": o.get("image"),
                            "gpus": {
                                **base["gpus"],
                                **{k: int(v) for k, v in o.get("extra_resource_limits", {}).items()},
                            },
                        }
                    )
            if option.get("unlisted_choice", {}).get("enabled"):
                out.append({**base, "image": "unlisted"})
    return [o for o in out if sum(o["gpus"].values()) <= gpu_cap(groups)]


def outcome(spawner) -> dict:
    gpus = {k: int(v) for k, v in spawner.extra_resource_limits.items() if k.startswith("nvidia.com/")}
    return {"cpu_limit": spawner.cpu_limit, "gpus": gpus, "image": spawner.image}


def matches(actual: dict, permitted: list[dict]) -> bool:
    for p in permitted:
        if p["cpu_limit"] == actual["cpu_limit"] and p["gpus"] == actual["gpus"]:
            if (p.get("image") or DEFAULT_IMAGE) == actual["image"]:
                return True
            if p["image"] == "unlisted" and actual["image"].startswith("reg/"):
                import re

                return re.fullmatch(r"reg/[a-z]+:[0-9]+", actual["image"]) is not None
    return False


# ------------------------------------------------------------------ (a) spawner
def load(spawners, groups, user_options):
    """('ok', outcome) or ('refused', SpawnRefused); anything else propagates (a crash)."""
    spawner = spawners.make("alice", "", groups=sorted(groups))
    spawner.profile_list = PROFILES
    spawner.casa_max_gpus, spawner.casa_max_gpus_by_group = MAX_GPUS, GPU_CAPS
    spawner.user_options = user_options
    try:
        spawners.loop.run_until_complete(spawner.load_user_options())
    except SpawnRefused as e:
        assert 400 <= e.status_code < 500, e.status_code
        assert getattr(e, "jupyterhub_message", None), "a refusal must carry a message for the user"
        return "refused", e
    return "ok", outcome(spawner)


slugs = st.one_of(st.sampled_from(["cpu", "gpu", "mig", "big", "", "CPU", "gpu ", "nope"]), st.text(max_size=12))
choice_values = st.one_of(
    st.sampled_from(["1", "2", "8", "mig-1g.5gb", "mig-3g.20gb", "0", "-1", "16", "base", "ml", "", " 1", "1 "]),
    st.integers(-5, 100).map(str),
    st.text(max_size=8),
    st.just("9" * 200),
)
option_names = st.sampled_from(
    ["gpus", "image", "gpus--unlisted-choice", "image--unlisted-choice", "cpu_limit", "extra_resource_limits"]
)
form_keys = st.one_of(
    st.builds(lambda s, o: f"profile-option-{s}--{o}", slugs, option_names),
    st.sampled_from(["profile", "cpu_limit", "extra_resource_limits", "image", "nvidia.com/gpu"]),
    st.text(max_size=20),
)
# a well-formed form with a chosen profile and option values (most likely to reach the checks), or anything
structured_forms = st.builds(
    lambda slug, opts: {"profile": [slug], **{f"profile-option-{slug}--{o}": [v] for o, v in opts.items()}},
    slugs,
    st.dictionaries(option_names, choice_values, max_size=2),
)
forms = st.one_of(
    structured_forms,
    st.dictionaries(form_keys, st.lists(st.one_of(choice_values, slugs), min_size=1, max_size=3), max_size=5),
)
groups_st = st.sets(st.sampled_from(GROUPS), max_size=3)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**20, max_value=10**30),
        st.floats(allow_nan=False),
        st.text(max_size=10),
        choice_values,
        slugs,
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
structured_api = st.fixed_dictionaries(
    {},
    optional={
        "profile": st.one_of(slugs, json_values),
        "gpus": st.one_of(choice_values, json_values),
        "image": st.one_of(choice_values, json_values),
        "image--unlisted-choice": st.one_of(choice_values, json_values),
    },
)
api_options = st.one_of(
    structured_api,
    st.dictionaries(
        st.one_of(
            st.sampled_from(
                [
                    "profile",
                    "gpus",
                    "image",
                    "gpus--unlisted-choice",
                    "image--unlisted-choice",
                    "extra_resource_limits",
                    "cpu_limit",
                ]
            ),
            st.text(max_size=10),
        ),
        json_values,
        max_size=5,
    ),
)


@FUZZ
@given(groups=groups_st, form=forms)
@example(groups={"cms"}, form={"profile": ["gpu"], "profile-option-gpu--gpus": ["1"]})
@example(groups={"gpu-users"}, form={"profile": ["gpu"], "profile-option-gpu--gpus": ["8"]})
@example(groups={"gpu-tiny"}, form={"profile": ["gpu"], "profile-option-gpu--gpus": ["2"]})
@example(groups={"gpu-users"}, form={"profile": ["mig"]})
@example(groups={"cms"}, form={"profile": ["cpu"], "profile-option-cpu--image--unlisted-choice": ["evil/x:1"]})
def test_spawn_form_is_accepted_within_the_users_choices_or_refused(spawners, groups, form):
    """Any form data (Tornado's lists of strings) -> either the server gets a profile, choice and GPU count the
    user's groups allow (computed from the profile list here), or a 4xx SpawnRefused with a message."""
    spawner = spawners.make("alice", "", groups=sorted(groups))
    spawner.profile_list = PROFILES
    user_options = spawner.options_from_form(form)
    result, value = load(spawners, groups, user_options)
    if result == "ok":
        assert matches(value, permitted_outcomes(groups)), (groups, form, value)


@FUZZ
@given(groups=groups_st, options=api_options)
@example(groups={"cms"}, options={"profile": ["gpu"]})
@example(groups={"cms"}, options={"profile": "cpu", "image--unlisted-choice": 5})
@example(groups={"gpu-users"}, options={"profile": "gpu", "gpus": "8"})
@example(groups=set(), options={"profile": "big"})
@example(groups={"admins"}, options={"profile": "big"})
def test_api_spawn_options_are_accepted_within_the_users_choices_or_refused(spawners, groups, options):
    """Any JSON object as REST API user_options -> within the user's choices and GPU cap, or a 4xx
    SpawnRefused with a message; never another exception."""
    result, value = load(spawners, groups, options)
    if result == "ok":
        assert matches(value, permitted_outcomes(groups)), (groups, options, value)


# ------------------------------------------------------------------ (b) cluster options
@pytest.fixture(scope="module")
def specs():
    out = []
    for gpus, max_per_worker, backends in (
        (0, None, ["local"]),
        (2, 1, ["local", "htcondor", "gateway"]),
        (4, None, ["local", "gateway"]),
    ):
        settings_ = CasaClusterSettings(
            backends=backends,
            max_gpus_per_worker=max_per_worker,
            max_workers=4,
            max_cores=8,
            max_memory="16 GiB",
            gateway_address="http://127.0.0.1:1",
        )
        out.append(OptionsSpec(settings_, Inventory(tuple(GPU(i, str(i)) for i in range(gpus)), "CASA_GPU_COUNT")))
    return out


cluster_values = st.one_of(
    json_values,
    st.sampled_from(
        ["local", "htcondor", "gateway", "4 GiB", "100 GiB", "1 B", "16 GiB", "-1", "3", "nan", "1e3", "2 XB"]
    ),
    st.integers(-3, 20),
)
field_values = {
    "backend": st.one_of(st.sampled_from(["local", "htcondor", "gateway"]), cluster_values),
    "workers": st.one_of(st.integers(-2, 20), st.integers(-2, 20).map(str), cluster_values),
    "cores": st.one_of(st.integers(-2, 20), cluster_values),
    "memory": st.one_of(
        st.sampled_from(["128 MiB", "256 MiB", "4 GiB", "16 GiB", "17 GiB"]), st.integers(0, 2**36), cluster_values
    ),
    "gpus_per_worker": st.one_of(st.integers(-1, 6), cluster_values),
}
structured_requests = st.fixed_dictionaries({}, optional=field_values)
cluster_requests = st.one_of(
    structured_requests,
    st.dictionaries(
        st.one_of(st.sampled_from(["backend", "workers", "cores", "memory", "gpus_per_worker"]), st.text(max_size=8)),
        cluster_values,
        max_size=5,
    ),
)


@FUZZ
@given(index=st.integers(0, 2), request=cluster_requests)
@example(index=1, request={"backend": "htcondor", "gpus_per_worker": 1})
@example(index=2, request={"backend": "gateway", "gpus_per_worker": 2})
@example(index=1, request={"workers": 3, "gpus_per_worker": 1})
@example(index=0, request={"memory": 1e400})
@example(index=0, request={"memory": float("nan")})
@example(index=0, request={"workers": "٣"})
def test_cluster_options_are_within_bounds_or_refused(specs, index, request):
    """Any JSON object as a cluster request -> a ClusterOptions inside every declared bound (backend offered,
    workers/cores/memory in range, GPUs per worker within the backend's limit and this server's GPUs), or an
    OptionError (a 4xx) with a message; nothing else."""
    spec = specs[index]
    s = spec.settings
    try:
        options = spec.validate(request)
    except OptionError as e:
        assert 400 <= e.status_code < 500 and str(e)
        return
    assert isinstance(options, ClusterOptions)
    assert options.backend in s.backends
    assert isinstance(options.workers, int) and 0 <= options.workers <= s.max_workers
    assert isinstance(options.cores, int) and 1 <= options.cores <= s.max_cores
    assert isinstance(options.memory, int) and 2**28 <= options.memory <= 16 * 2**30
    limit = (
        (
            min(s.max_gpus_per_worker, spec.inventory.count)
            if s.max_gpus_per_worker is not None
            else spec.inventory.count
        )
        if options.backend == "local"
        else (s.max_gpus_per_worker or 0)
    )
    assert isinstance(options.gpus_per_worker, int) and 0 <= options.gpus_per_worker <= limit
    if options.backend == "local":
        assert options.workers * options.gpus_per_worker <= spec.inventory.count
