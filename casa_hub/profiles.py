"""Profile gating: which profiles a user may see and start, and what GPU resources a start may ask for.

Profiles stay in KubeSpawner's own ``profile_list`` format (Z2JH ``singleuser.profileList``); Casa adds one
key, ``casa_allowed_groups``: a profile with it is offered only to members of those groups.
"""

from __future__ import annotations

import copy
import re

GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-[0-9a-z.]+)$")


class ProfileRefused(Exception):
    """A start request for something the user may not have; the message is shown to the user."""


def visible_profiles(profile_list: list[dict], groups) -> list[dict]:
    """The profiles ``groups`` may use, without Casa's own keys (KubeSpawner sees plain profiles)."""
    groups = set(groups)
    out = []
    for profile in profile_list:
        allowed = profile.get("casa_allowed_groups")
        if allowed and not groups & set(allowed):
            continue
        p = copy.deepcopy(profile)
        p.pop("casa_allowed_groups", None)
        out.append(p)
    return out


def check_profile_choice(profile_list: list[dict], visible: list[dict], slug: str | None) -> None:
    """Refuse a submitted profile the user cannot see (a tampered form or API call)."""
    if not slug:
        return
    visible_slugs = {p.get("slug") for p in visible}
    if slug in visible_slugs:
        return
    if any(p.get("slug") == slug for p in profile_list):
        raise ProfileRefused(f"The profile {slug!r} is not available to your account; "
                             f"you may choose: {', '.join(sorted(s for s in visible_slugs if s))}.")
    raise ProfileRefused(f"There is no profile {slug!r}.")


def gpu_limits(extra_resource_limits: dict) -> dict[str, int]:
    """The GPU resources (whole GPUs and MIG slices) among a pod's extra resource limits."""
    out = {}
    for name, value in (extra_resource_limits or {}).items():
        if GPU_RESOURCE.match(name):
            try:
                out[name] = int(str(value))
            except ValueError:
                raise ProfileRefused(f"Invalid GPU count {value!r} for {name}") from None
    return out


def check_gpu_limits(extra_resource_limits: dict, max_gpus: int) -> dict[str, int]:
    limits = gpu_limits(extra_resource_limits)
    total = sum(limits.values())
    if any(v < 0 for v in limits.values()) or total > max_gpus:
        raise ProfileRefused(f"This server asks for {total} GPU(s); the facility allows at most {max_gpus} "
                             f"per server.")
    return limits


def offers_gpus(profile: dict) -> bool:
    """Whether a profile (or one of its option choices) asks for GPU resources."""
    overrides = [profile.get("kubespawner_override", {})]
    for option in profile.get("profile_options", {}).values():
        overrides += [c.get("kubespawner_override", {}) for c in option.get("choices", {}).values()]
    return any(GPU_RESOURCE.match(name) for o in overrides for name in o.get("extra_resource_limits", {}))


def free_gpus(nodes: list[dict], pods: list[dict], resource: str = "nvidia.com/gpu") -> int:
    """GPUs the cluster can still give out: allocatable on schedulable nodes minus what running or pending
    pods request (the scheduler's own arithmetic, coarsely)."""
    allocatable = 0
    usable = set()
    for node in nodes:
        if node.get("spec", {}).get("unschedulable"):
            continue
        usable.add(node["metadata"]["name"])
        allocatable += int(node.get("status", {}).get("allocatable", {}).get(resource, 0) or 0)
    used = 0
    for pod in pods:
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if pod.get("spec", {}).get("nodeName") not in usable and pod.get("spec", {}).get("nodeName"):
            continue
        for c in pod.get("spec", {}).get("containers", []):
            used += int((c.get("resources") or {}).get("limits", {}).get(resource, 0) or 0)
    return max(0, allocatable - used)
