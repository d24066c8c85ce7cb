"""Profile gating: which profiles a user may see and start, and what GPU resources a start may ask for.

Profiles stay in KubeSpawner's own ``profile_list`` format (Z2JH ``singleuser.profileList``); Casa adds one
key, ``casa_allowed_groups``, allowed on a profile and on a ``profile_options`` choice: a profile (choice) with
it is offered only to members of those groups. :func:`gpu_profile` builds such a profile for GPUs, whole
(``nvidia.com/gpu``) or MIG slices (``nvidia.com/mig-1g.5gb`` ...), with the node selector and tolerations GPU
nodes need.

Everything here is pure (dicts in, dicts out); :class:`ProfileRefused` carries a message for the user.
"""

from __future__ import annotations

import copy
import re
from typing import Iterable, Mapping

from slugify import slugify  # what KubeSpawner names a profile without a slug by (python-slugify, its dependency)

GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-[0-9a-z.]+)$")
WHOLE_GPU = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}  # set by NVIDIA's GPU feature discovery
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class ProfileRefused(Exception):
    """A start request for something the user may not have; the message is shown to the user."""


# ------------------------------------------------------------------ building GPU profiles
def gpu_choice(
    display_name: str, resources: Mapping[str, int], *, allowed_groups: Iterable[str] = (), default: bool = False
) -> dict:
    """One ``profile_options`` choice asking for ``resources`` (e.g. ``{"nvidia.com/mig-1g.5gb": 1}``)."""
    for name, count in resources.items():
        if not GPU_RESOURCE.match(name) or int(count) < 1:
            raise ValueError(f"not a GPU resource request: {name}={count!r}")
    choice = {
        "display_name": display_name,
        "kubespawner_override": {"extra_resource_limits": {k: str(int(v)) for k, v in resources.items()}},
    }
    if allowed_groups:
        choice["casa_allowed_groups"] = sorted(allowed_groups)
    if default:
        choice["default"] = True
    return choice


def gpu_profile(
    slug: str,
    display_name: str,
    *,
    gpus: Iterable[int] = (1,),
    mig: Iterable[str] = (),
    allowed_groups: Iterable[str] = (),
    description: str = "",
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict] | None = None,
    choice_groups: Mapping[str, Iterable[str]] | None = None,
    kubespawner_override: dict | None = None,
) -> dict:
    """A KubeSpawner profile offering whole GPUs (``gpus``: counts) and MIG slices (``mig``: profiles such as
    ``"1g.5gb"``) as choices of one option named ``gpus``; choice keys are ``"1"``, ``"2"``, ``"mig-1g.5gb"``.

    ``choice_groups`` restricts single choices (``{"4": ["gpu-power"]}``); ``allowed_groups`` the profile.
    """
    choice_groups = dict(choice_groups or {})
    choices = {}
    for n in gpus:
        key = str(int(n))
        choices[key] = gpu_choice(
            f"{n} GPU" + ("s" if int(n) > 1 else ""), {WHOLE_GPU: int(n)}, allowed_groups=choice_groups.get(key, ())
        )
    for slice_ in mig:
        key = f"mig-{slice_}"
        choices[key] = gpu_choice(
            f"MIG slice {slice_}", {f"nvidia.com/mig-{slice_}": 1}, allowed_groups=choice_groups.get(key, ())
        )
    if not choices:
        raise ValueError("a GPU profile needs at least one GPU count or MIG slice")
    next(iter(choices.values()))["default"] = True
    override = {
        "node_selector": dict(GPU_NODE_SELECTOR if node_selector is None else node_selector),
        "tolerations": copy.deepcopy(GPU_TOLERATIONS if tolerations is None else tolerations),
    }
    override.update(copy.deepcopy(kubespawner_override or {}))
    profile = {
        "display_name": display_name,
        "slug": slug,
        "description": description,
        "kubespawner_override": override,
        "profile_options": {"gpus": {"display_name": "GPUs", "choices": choices}},
    }
    if allowed_groups:
        profile["casa_allowed_groups"] = sorted(allowed_groups)
    return profile


def extend_tolerations(configured, chosen) -> list[dict]:
    """The deployment's tolerations (Z2JH: ``scheduling.userPods.tolerations`` + ``singleuser.extraTolerations``)
    followed by those a profile adds. KubeSpawner's ``kubespawner_override`` replaces a list outright, so a GPU
    profile's tolerations would otherwise drop the chart's, and the pod could not land on a user node pool
    tainted the chart's way. Either value may be KubeSpawner's dict form (values sorted by key)."""

    def as_list(value) -> list[dict]:
        return [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value or [])

    base = as_list(configured)
    return base + [t for t in as_list(chosen) if t not in base]


# ------------------------------------------------------------------ who may see what
def _allowed(item: Mapping, groups: set[str]) -> bool:
    allowed = item.get("casa_allowed_groups")
    return not allowed or bool(groups & set(allowed))


def visible_profiles(profile_list: list[dict], groups) -> list[dict]:
    """The profiles (and choices) ``groups`` may use, without Casa's own keys: KubeSpawner sees plain
    profiles. A profile left with an option without any choice is dropped. The input is not modified."""
    groups = set(groups)
    out = []
    for profile in profile_list:
        if not _allowed(profile, groups):
            continue
        p = copy.deepcopy(profile)
        p.pop("casa_allowed_groups", None)
        usable = True
        for option in p.get("profile_options", {}).values():
            if "choices" not in option:
                continue
            option["choices"] = {k: c for k, c in option["choices"].items() if _allowed(c, groups)}
            for c in option["choices"].values():
                c.pop("casa_allowed_groups", None)
            if not option["choices"] and not option.get("unlisted_choice", {}).get("enabled"):
                usable = False
        if usable:
            out.append(p)
    return out


def initialized_profiles(profile_list: list[dict]) -> list[dict]:
    """A copy of ``profile_list`` completed as KubeSpawner documents it reads one: a profile without ``slug``
    gets one from its ``display_name``, the first profile is the default when none is, the first choice of an
    option is its default when none is, and ``unlisted_choice`` is off unless enabled."""
    profiles = copy.deepcopy(list(profile_list))
    for profile in profiles:
        if "slug" not in profile:
            profile["slug"] = slugify(profile["display_name"])
        for option in profile.get("profile_options", {}).values():
            choices = option.get("choices")
            if choices and not any(c.get("default") for c in choices.values()):
                next(iter(choices.values()))["default"] = True
            unlisted = option.setdefault("unlisted_choice", {})
            unlisted.setdefault("enabled", False)
            if unlisted["enabled"]:
                unlisted.setdefault("display_name_in_choices", "Other...")
    if profiles and not any(p.get("default") for p in profiles):
        profiles[0]["default"] = True
    return profiles


def complete_user_options(visible: list[dict], user_options: Mapping) -> dict:
    """``user_options`` with this user's defaults made explicit: the profile (the default among ``visible``, the
    user's initialized profiles) and every option's choice left open. KubeSpawner then applies exactly what the
    user could have picked, even where the configured default is a profile or choice of other groups."""
    options = dict(user_options)
    if not visible:
        raise ProfileRefused("No server profile is available to your account; please ask the facility administrators.")
    slug = options.get("profile") or next((p["slug"] for p in visible if p.get("default")), visible[0]["slug"])
    profile = next(p for p in visible if p["slug"] == slug)
    options["profile"] = slug
    for name, option in profile.get("profile_options", {}).items():
        if options.get(name) or options.get(f"{name}--unlisted-choice"):
            continue
        default = next((key for key, c in option.get("choices", {}).items() if c.get("default")), None)
        if default is not None:
            options[name] = default
    return options


def check_profile_choice(profile_list: list[dict], visible: list[dict], slug: str | None) -> None:
    """Refuse a submitted profile the user cannot see (a tampered form or API call)."""
    if not slug:
        return
    visible_slugs = {p.get("slug") for p in visible}
    if slug in visible_slugs:
        return
    if any(p.get("slug") == slug for p in profile_list):
        raise ProfileRefused(
            f"The profile {slug!r} is not available to your account; "
            f"you may choose: {', '.join(sorted(s for s in visible_slugs if s))}."
        )
    raise ProfileRefused(f"There is no profile {str(slug)[:64]!r}.")


def check_user_options(profile_list: list[dict], visible: list[dict], user_options: Mapping) -> None:
    """Validate submitted options against what this user may have, before KubeSpawner applies them.

    ``profile_list`` is everything configured, ``visible`` what this user sees (:func:`visible_profiles`;
    both initialized by KubeSpawner, so slugs are set). Refuses, with a message for the user: a profile that
    does not exist or is not theirs, a choice that does not exist or is not theirs, and a value of their own
    for an option that does not take one.
    """
    user_options = user_options or {}
    slug = user_options.get("profile")
    if slug is not None and not isinstance(slug, str):  # the REST API passes any JSON
        raise ProfileRefused(f"The profile must be given by its name (a string), not {str(slug)[:64]!r}.")
    check_profile_choice(profile_list, visible, slug)
    if not visible:
        return
    profile = (
        next((p for p in visible if p.get("slug") == slug), None)
        if slug
        else next((p for p in visible if p.get("default")), visible[0])
    )
    full = next((p for p in profile_list if p.get("slug") == profile.get("slug")), profile)
    for name, option in profile.get("profile_options", {}).items():
        label = option.get("display_name") or name
        choice = user_options.get(name)
        unlisted = user_options.get(f"{name}--unlisted-choice")
        if unlisted is not None and not isinstance(unlisted, str):
            raise ProfileRefused(f"{label}: a value of your own must be a string, not {str(unlisted)[:64]!r}.")
        regex = option.get("unlisted_choice", {}).get("validation_regex")
        if unlisted and regex and not re.match(regex, unlisted):
            # checked here too: KubeSpawner skips it when no profile is named (the default profile applies)
            raise ProfileRefused(f"{unlisted[:64]!r} is not an accepted value for {label}.")
        if unlisted and not option.get("unlisted_choice", {}).get("enabled"):
            raise ProfileRefused(
                f"{label} in profile {profile['slug']!r} takes no value of your own; "
                f"choose one of: {', '.join(option.get('choices', {}))}."
            )
        if choice is None or choice == "" or unlisted:
            continue
        choices = option.get("choices", {})
        if not isinstance(choice, str) or choice not in choices:
            all_choices = full.get("profile_options", {}).get(name, {}).get("choices", {})
            if isinstance(choice, str) and choice in all_choices:
                raise ProfileRefused(
                    f"{all_choices[choice].get('display_name', choice)!s} is not available to "
                    f"your account; for {label} you may choose: {', '.join(choices)}."
                )
            raise ProfileRefused(
                f"{str(choice)[:64]!r} is not a choice for {label} in profile "
                f"{profile['slug']!r}; choose one of: {', '.join(choices)}."
            )


# ------------------------------------------------------------------ GPU bounds
def gpu_limits(extra_resource_limits: Mapping) -> dict[str, int]:
    """The GPU resources (whole GPUs and MIG slices) among a pod's extra resource limits."""
    out = {}
    for name, value in (extra_resource_limits or {}).items():
        if GPU_RESOURCE.match(name):
            try:
                out[name] = int(str(value))
            except ValueError:
                raise ProfileRefused(f"Invalid GPU count {str(value)[:32]!r} for {name}.") from None
    return out


def check_gpu_limits(extra_resource_limits: Mapping, max_gpus: int) -> dict[str, int]:
    """Refuse negative counts and more GPUs (whole and MIG slices summed) than ``max_gpus``."""
    limits = gpu_limits(extra_resource_limits)
    total = sum(limits.values())
    if any(v < 0 for v in limits.values()) or total > max_gpus:
        raise ProfileRefused(f"This server asks for {total} GPU(s); the facility allows at most {max_gpus} per server.")
    return limits


def max_gpus_for(groups, default: int, by_group: Mapping[str, int]) -> int:
    """The GPU cap of a user: the largest cap among their groups (``by_group``), else ``default``."""
    caps = [int(by_group[g]) for g in groups if g in by_group]
    return max(caps) if caps else default


def offers_gpus(profile: Mapping) -> bool:
    """Whether a profile (or one of its option choices) asks for GPU resources."""
    overrides = [profile.get("kubespawner_override", {})]
    for option in profile.get("profile_options", {}).values():
        overrides += [c.get("kubespawner_override", {}) for c in option.get("choices", {}).values()]
    return any(GPU_RESOURCE.match(name) for o in overrides for name in o.get("extra_resource_limits", {}))


# ------------------------------------------------------------------ live availability
def _quantity(value) -> int:
    try:
        return int(str(value or 0))
    except ValueError:
        return 0


def free_resources(nodes: list[dict], pods: list[dict], pattern: re.Pattern = GPU_RESOURCE) -> dict[str, int]:
    """Per extended resource matching ``pattern``: allocatable on schedulable nodes minus what the pods
    placed (or pending) there request; the scheduler's arithmetic, coarsely. Dicts in the API's JSON form."""
    allocatable: dict[str, int] = {}
    usable = set()
    for node in nodes:
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        usable.add((node.get("metadata") or {}).get("name"))
        for name, value in ((node.get("status") or {}).get("allocatable") or {}).items():
            if pattern.match(name):
                allocatable[name] = allocatable.get(name, 0) + _quantity(value)
    used: dict[str, int] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        spec = pod.get("spec") or {}
        if spec.get("nodeName") and spec["nodeName"] not in usable:
            continue
        for c in spec.get("containers") or []:
            resources = c.get("resources") or {}
            # extended resources: requests default to limits and must equal them
            wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
            for name, value in wanted.items():
                if pattern.match(name):
                    used[name] = used.get(name, 0) + _quantity(value)
    return {name: max(0, total - used.get(name, 0)) for name, total in sorted(allocatable.items())}


def free_gpus(nodes: list[dict], pods: list[dict], resource: str = WHOLE_GPU) -> int:
    """Free units of one GPU resource (whole GPUs by default)."""
    return free_resources(nodes, pods, re.compile(re.escape(resource) + "$")).get(resource, 0)


def describe_availability(free: Mapping[str, int]) -> str:
    """``"4 GPUs, 7 × MIG 1g.5gb free now"`` (empty when the cluster reports no GPU resources)."""
    parts = []
    for name, n in sorted(free.items(), key=lambda kv: (kv[0] != WHOLE_GPU, kv[0])):
        parts.append(
            f"{n} GPU" + ("s" if n != 1 else "")
            if name == WHOLE_GPU
            else f"{n} × MIG {name.removeprefix('nvidia.com/mig-')}"
        )
    return (", ".join(parts) + " free now") if parts else ""
