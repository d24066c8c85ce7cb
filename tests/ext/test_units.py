"""Pure tests: GPU discovery, bounded options, the mounted bundle, backend builders (no cluster started)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from distributed.security import Security

from casa_hub_ext.bundle import MountedBundle
from casa_hub_ext.errors import CredentialError, OptionError
from casa_hub_ext.factory import gateway_options, gpu_groups, htcondor_job_directives, htcondor_kwargs
from casa_hub_ext.gpu import discover
from casa_hub_ext.options import CasaClusterSettings, ClusterOptions, OptionsSpec
from tests.ext.conftest import declared_gpus


# ------------------------------------------------------------------------------------------ gpu
class FakeNVML:
    def __init__(self, n):
        self.n = n

    def nvmlInit(self):
        if self.n is None:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA A100"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}aaaa-0000"

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"total": 40 * 2**30})()


def test_nvml_first_and_restricted_by_cuda_visible_devices():
    inv = discover({}, nvml=FakeNVML(4))
    assert (inv.source, inv.count, inv.gpus[0].name, inv.gpus[1].id) == ("nvml", 4, "NVIDIA A100", "GPU-1aaaa-0000")
    inv = discover({"CUDA_VISIBLE_DEVICES": "2,GPU-3aaaa"}, nvml=FakeNVML(4))
    assert [(g.index, g.id) for g in inv.gpus] == [(0, "GPU-2aaaa-0000"), (1, "GPU-3aaaa-0000")]


@pytest.mark.parametrize(
    "env, source, ids",
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1", "CASA_GPU_COUNT": "8"}, "CUDA_VISIBLE_DEVICES", ["0", "1"]),
        ({"CUDA_VISIBLE_DEVICES": "0,1", "CASA_GPU_COUNT": "1"}, "CUDA_VISIBLE_DEVICES", ["0"]),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b", "CASA_GPU_COUNT": "0"}, "NVIDIA_VISIBLE_DEVICES", []),
        ({"CUDA_VISIBLE_DEVICES": ""}, "CUDA_VISIBLE_DEVICES", []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, "CUDA_VISIBLE_DEVICES", []),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, "NVIDIA_VISIBLE_DEVICES", ["GPU-a", "GPU-b"]),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, "NVIDIA_VISIBLE_DEVICES", []),
        ({"NVIDIA_VISIBLE_DEVICES": "all", "CASA_GPU_COUNT": "2"}, "CASA_GPU_COUNT", ["0", "1"]),
        ({"CASA_GPU_COUNT": "3"}, "CASA_GPU_COUNT", ["0", "1", "2"]),
        ({}, "none", []),
    ],
)
def test_env_fallbacks_when_nvml_is_unusable(env, source, ids):
    inv = discover(env, nvml=FakeNVML(None))
    assert (inv.source, [g.id for g in inv.gpus]) == (source, ids)


@pytest.mark.parametrize(
    "granted, ids", [("0", []), ("1", ["GPU-0aaaa-0000"]), ("9", [f"GPU-{i}aaaa-0000" for i in range(4)])]
)
def test_the_hubs_grant_caps_what_nvml_sees(granted, ids):
    """A CPU-profile server on a GPU node (an image with NVIDIA_VISIBLE_DEVICES=all) sees the node's GPUs through
    NVML; its clusters get what the hub granted, never more than the driver has."""
    inv = discover({"CASA_GPU_COUNT": granted, "NVIDIA_VISIBLE_DEVICES": "all"}, nvml=FakeNVML(4))
    assert (inv.source, [g.id for g in inv.gpus]) == ("nvml", ids)


@pytest.mark.parametrize("nvml", [FakeNVML(None), FakeNVML(2)])
def test_bad_gpu_count_names_the_variable(nvml):
    with pytest.raises(ValueError, match="CASA_GPU_COUNT='two'"):
        discover({"CASA_GPU_COUNT": "two"}, nvml=nvml)


def test_gpu_groups_are_disjoint():
    assert gpu_groups(declared_gpus(5), 2) == ["0,1", "2,3"]
    assert gpu_groups(declared_gpus(2), 1) == ["0", "1"]
    assert gpu_groups(declared_gpus(2), 0) == []


# ------------------------------------------------------------------------------------------ options
def test_defaults_and_spec(settings):
    spec = OptionsSpec(settings, declared_gpus(2))
    assert spec.validate({}) == ClusterOptions("local", 2, 1, 2 * 2**30, 0)
    assert spec.spec()["gpus_per_worker_max"] == {"local": 1, "htcondor": 1, "gateway": 1}
    names = {"backend", "workers", "adapt", "cores", "memory", "gpus_per_worker"}
    assert {f["name"] for f in spec.spec()["fields"]} == names
    assert spec.validate({"memory": "4 GiB", "workers": "3"}).memory == 4 * 2**30


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"backend": "kubernetes"}, "backend='kubernetes': expected one of"),
        ({"workers": 5}, "workers=5 is outside the allowed range 0..4"),
        ({"workers": -1}, "workers=-1 is outside"),
        ({"workers": True}, "expected a whole number"),
        ({"cores": 99}, "cores=99 is outside the allowed range 1..8"),
        ({"memory": "1 TiB"}, "memory=1.00 TiB is outside"),
        ({"memory": "lots"}, "expected a size"),
        ({"gpus_per_worker": 2}, "gpus_per_worker=2 is outside the allowed range 0..1"),
        ({"gpus": 1}, "unknown cluster option"),
        ({"workers": 3, "gpus_per_worker": 1}, "3 worker(s) x 1 GPU(s) need 3 GPUs; this server has 2"),
    ],
)
def test_refusals_name_the_option(settings, request_, message):
    with pytest.raises(OptionError) as e:
        OptionsSpec(settings, declared_gpus(2)).validate(request_)
    assert message in str(e.value)
    assert e.value.status_code == 422


@pytest.mark.parametrize(
    "request_, field, message",
    [
        ({"workers": "two"}, "workers", "workers='two': expected a whole number"),
        ({"workers": ""}, "workers", "workers='': expected a whole number"),
        ({"workers": 1.5}, "workers", "workers=1.5: expected a whole number"),
        ({"workers": "1.5"}, "workers", "expected a whole number"),
        ({"workers": "٣"}, "workers", "expected a whole number"),  # digits, but not ASCII ones
        ({"cores": None}, "cores", "cores=None: expected a whole number"),
        ({"memory": ""}, "memory", "expected a size"),
        ({"memory": 2.5e9}, "memory", "expected a size"),
        ({"adapt": {"minimum": 3, "maximum": 1}}, "adapt", "minimum=3 is more than maximum=1"),
        ({"adapt": {"minimum": -1, "maximum": 1}}, "adapt.minimum", "adapt.minimum=-1 is outside"),
        ({"adapt": {"minimum": 0, "maximum": 5}}, "adapt.maximum", "adapt.maximum=5 is outside the allowed range 0..4"),
        ({"adapt": {"minimum": 0, "maximum": "x"}}, "adapt.maximum", "expected a whole number"),
        ({"adapt": {"minimum": 0}}, "adapt", "expected {'minimum': n, 'maximum': m}"),
        ({"adapt": [0, 2]}, "adapt", "expected {'minimum': n, 'maximum': m}"),
        ({"adapt": {"minimum": 0, "maximum": 2}, "workers": 1}, "adapt", "either workers or adapt"),
        ({"adapt": {"minimum": 0, "maximum": 3}, "gpus_per_worker": 1}, "workers", "need 3 GPUs; this server has 2"),
        ({"gpus": 1}, "gpus", "unknown cluster option"),
    ],
)
def test_bad_values_are_errors_naming_the_field(settings, request_, field, message):
    with pytest.raises(OptionError) as e:
        OptionsSpec(settings, declared_gpus(2)).validate(request_)
    assert message in str(e.value) and e.value.field == field


def test_adaptive_options(settings):
    options = OptionsSpec(settings, declared_gpus(2)).validate({"adapt": {"minimum": "1", "maximum": 2}})
    assert (options.adapt, options.workers, options.workers_booked) == ((1, 2), 1, 2)
    assert options.to_dict()["adapt"] == {"minimum": 1, "maximum": 2}
    assert options.scaled(workers=3) == ClusterOptions("local", 3, 1, 2 * 2**30, 0, None)


def test_the_form_fields(settings):
    fields = {f["name"]: f for f in (f.form() for f in OptionsSpec(settings, declared_gpus(2)).fields)}
    assert fields["workers"] == {
        "name": "workers",
        "label": "Workers",
        "type": "integer",
        "default": 2,
        "min": 0,
        "max": 4,
        "step": 1,
    }
    assert fields["backend"]["choices"] == ["local", "htcondor", "gateway"] and fields["backend"]["type"] == "select"
    assert (fields["adapt"]["type"], fields["adapt"]["max"], fields["adapt"]["default"]) == ("range", 4, None)
    assert (fields["memory"]["min"], fields["memory"]["max"]) == (2**28, 16 * 2**30)


def test_gpu_caps_per_backend(settings):
    spec = OptionsSpec(settings, declared_gpus(2))
    # defaults: local = GPUs here; remote = max_gpus_per_worker (1) x max_workers (4)
    assert spec.gpu_caps == {"local": 2, "htcondor": 4, "gateway": 4}
    settings.max_gpus_per_backend = {"htcondor": 2}
    spec = OptionsSpec(settings, declared_gpus(2))
    assert spec.gpu_caps["htcondor"] == 2
    with pytest.raises(OptionError, match=r"need 3 GPUs; the htcondor backend allows 2 \(CasaClusterSettings"):
        spec.validate({"backend": "htcondor", "workers": 3, "gpus_per_worker": 1})
    assert spec.validate({"backend": "htcondor", "workers": 3}).gpus_per_worker == 0
    with pytest.raises(Exception, match=r"unknown backend\(s\) \['slurm'\]"):
        CasaClusterSettings(max_gpus_per_backend={"slurm": 1})


@pytest.mark.parametrize(
    "max_per_worker, caps, gpus, reason",
    [
        (None, {}, 2, None),
        (None, {}, 0, "no GPU in this server's profile (none found: CASA_GPU_COUNT)"),
        (0, {}, 2, "GPUs are switched off for this server"),
        (1, {"local": 0, "htcondor": 0}, 2, "the facility's GPU cap is 0 for local, htcondor"),
        (1, {"local": 0}, 0, None),  # no GPU here, but HTCondor workers may have one
    ],
)
def test_gpu_availability_names_why_not(monkeypatch, max_per_worker, caps, gpus, reason):
    monkeypatch.delenv("CASA_GPU_MAX_PER_WORKER", raising=False)
    s = CasaClusterSettings(backends=["local", "htcondor"], max_gpus_per_worker=max_per_worker)
    s.max_gpus_per_backend = caps
    available, why = OptionsSpec(s, declared_gpus(gpus)).gpu_availability()
    assert available == (reason is None)
    assert (why is None) if reason is None else reason in why


def test_local_gpus_bounded_by_this_server(settings):
    settings.max_gpus_per_worker = 4
    spec = OptionsSpec(settings, declared_gpus(1))
    assert spec.gpu_limits == {"local": 1, "htcondor": 4, "gateway": 4}
    with pytest.raises(OptionError, match="more than the 1 GPU"):
        spec.validate({"gpus_per_worker": 2})
    assert spec.validate({"backend": "htcondor", "gpus_per_worker": 4, "workers": 4}).gpus_per_worker == 4


def test_settings_defaults_from_env(monkeypatch):
    monkeypatch.setenv("CASA_DASK_BACKENDS", "local,gateway")
    monkeypatch.setenv("CASA_GPU_MAX_PER_WORKER", "2")
    s = CasaClusterSettings()
    assert (s.backends, s.max_gpus_per_worker) == (["local", "gateway"], 2)
    monkeypatch.delenv("CASA_GPU_MAX_PER_WORKER")
    assert OptionsSpec(CasaClusterSettings(), declared_gpus(3)).gpu_limits == {"local": 3, "gateway": 0}
    with pytest.raises(Exception, match=r"CasaClusterSettings.backends=\['slurm'\]"):
        CasaClusterSettings(backends=["slurm"])


# ------------------------------------------------------------------------------------------ bundle
def test_manifest_and_status(mounted, bundle_dir):
    assert mounted.user == "alice"
    status = mounted.status()
    names = {c["name"] for c in status["credentials"]}
    assert {"xcache", "htcondor", "servicex", "dask-worker", "dask-ca"} <= names
    assert all(c["present"] for c in status["credentials"])
    assert 3600 - 60 < status["seconds_left"] <= 3600  # the storage token (1 h) lapses first
    assert mounted.condor_token_dir == bundle_dir / "condor-tokens"


def _rewrite_manifest(bundle_dir, change) -> MountedBundle:
    path = bundle_dir / "casa.json"
    doc = json.loads(path.read_text())
    change(doc["credentials"])
    path.chmod(0o644)
    path.write_text(json.dumps(doc))
    return MountedBundle.from_directory(bundle_dir)


def test_a_kind_the_user_side_never_heard_of_is_listed_from_the_manifest(bundle_dir):
    """What a site's own kind minted shows up with its label, file, env variable and audience: the user side
    knows no kind by name."""
    (bundle_dir / "site.token").write_text("token\n")
    entry = {"name": "site", "label": "Site API token", "file": "site.token", "env": "SITE_TOKEN_FILE"}
    entry |= {"audience": "https://api.site.example", "scopes": ["read"], "expires_at": "2999-01-01T00:00:00+00:00"}
    bundle = _rewrite_manifest(bundle_dir, lambda creds: creds.update(site=entry))
    (item,) = [c for c in bundle.status()["credentials"] if c["name"] == "site"]
    assert item == {
        "name": "site",
        "label": "Site API token",
        "file": str(bundle_dir / "site.token"),
        "env": "SITE_TOKEN_FILE",
        "audience": "https://api.site.example",
        "scopes": ["read"],
        "present": True,
        "expires_at": "2999-01-01T00:00:00+00:00",
        "seconds_left": item["seconds_left"],
        "expired": False,
    }
    bundle.require("site")
    (bundle_dir / "site.token").unlink()
    with pytest.raises(CredentialError, match=r"the Site API token \(site\) is missing"):
        bundle.require("site")


def test_the_dask_files_are_the_ones_the_manifest_names(bundle_dir):
    (bundle_dir / "dask/worker.key").rename(bundle_dir / "dask/w.key")
    bundle = _rewrite_manifest(bundle_dir, lambda creds: creds["dask-worker"].update(key_file="dask/w.key"))
    assert bundle.dask_paths("worker") == (bundle_dir / "dask/worker.crt", bundle_dir / "dask/w.key")
    assert bundle.security().tls_worker_key == str(bundle_dir / "dask/w.key")


def test_a_manifest_of_an_older_hub_still_reads(bundle_dir):
    """Before the credential kinds the manifest had only file and expiry, and no CA entry."""

    def strip(creds):
        creds.pop("dask-ca")
        for name, entry in creds.items():
            creds[name] = {k: v for k, v in entry.items() if k in ("file", "expires_at", "user")}

    bundle = _rewrite_manifest(bundle_dir, strip)
    assert bundle.security().tls_ca_file == str(bundle_dir / "dask/ca.pem")
    assert bundle.condor_user == "alice" and bundle.label("xcache") == "xcache"
    assert {c["name"]: c["env"] for c in bundle.status()["credentials"]}["xcache"] is None


def test_an_unreadable_manifest_is_a_credential_error(bundle_dir):
    (bundle_dir / "casa.json").chmod(0o644)
    (bundle_dir / "casa.json").write_text('{"credentials": {"xcache": {"expires_at": null}}}')
    with pytest.raises(CredentialError, match="casa.json is unreadable: credential 'xcache' of the manifest names no"):
        MountedBundle.from_directory(bundle_dir)


def test_security_from_files(mounted, bundle_dir):
    sec = mounted.security()
    assert isinstance(sec, Security) and sec.require_encryption
    assert sec.tls_ca_file == str(bundle_dir / "dask/ca.pem")
    assert sec.tls_worker_key == str(bundle_dir / "dask/worker.key")


def test_from_env(bundle_dir):
    assert MountedBundle.from_env({"CASA_CREDENTIALS_DIR": str(bundle_dir)}).user == "alice"
    with pytest.raises(CredentialError, match="CASA_CREDENTIALS_DIR is not set"):
        MountedBundle.from_env({})


def test_missing_credential_is_named(bundle_dir):
    (bundle_dir / "dask/worker.crt").unlink()
    with pytest.raises(CredentialError) as e:
        MountedBundle.from_directory(bundle_dir).security()
    assert e.value.credential == "dask-worker"
    assert "Dask worker certificate (dask-worker) is missing" in str(e.value)
    (bundle_dir / "condor-tokens/casa").unlink()
    with pytest.raises(CredentialError, match=r"HTCondor IDTOKEN \(htcondor\) is missing"):
        MountedBundle.from_directory(bundle_dir).require("htcondor")


def test_expired_credential_is_named(expired_bundle_dir):
    bundle = MountedBundle.from_directory(expired_bundle_dir)
    with pytest.raises(CredentialError) as e:
        bundle.security()
    assert e.value.credential == "dask-scheduler" and "expired" in str(e.value)
    assert all(c["expired"] for c in bundle.status()["credentials"] if c["expires_at"])


def test_no_manifest(tmp_path):
    with pytest.raises(CredentialError, match="casa.json does not exist"):
        MountedBundle.from_directory(tmp_path)


# ------------------------------------------------------------------------------------------ backend builders
def test_htcondor_job(mounted, bundle_dir, settings):
    opts = ClusterOptions("htcondor", 2, 2, 4 * 2**30, 1)
    assert htcondor_job_directives(opts, mounted, settings) == {
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT_OR_EVICT",
        "transfer_input_files": ",".join(str(bundle_dir / "dask" / f) for f in ("ca.pem", "worker.crt", "worker.key")),
        "encrypt_input_files": "ca.pem,worker.crt,worker.key",
        "accounting_group": "group_casa.alice",
        "accounting_group_user": "alice",
        "request_gpus": "1",
    }
    kw = htcondor_kwargs(opts, mounted, settings)
    assert kw["worker_extra_args"] == ["--resources", "GPU=1"]
    assert (kw["cores"], kw["memory"], kw["protocol"], kw["python"]) == (2, 4 * 2**30, "tls://", sys.executable)
    assert kw["job_cls"].casa_env == {"_CONDOR_SEC_TOKEN_DIRECTORY": str(bundle_dir / "condor-tokens")}


def test_htcondor_job_accounts_to_the_pool_account_the_token_names(tmp_path, settings):
    """An e-mail-like hub name is no pool account: the job is accounted to the account its IDTOKEN names."""
    from casa_hub.credentials.htcondor import condor_user
    from tests.support import make_minter, write_bundle

    bundle = make_minter(tmp_path / "keys").mint("bob@cern.ch", email="bob@cern.ch")
    mounted = MountedBundle.from_directory(write_bundle(bundle, tmp_path / "creds"))
    directives = htcondor_job_directives(ClusterOptions("htcondor", 1, 1, 2**30, 0), mounted, settings)
    account = condor_user("bob@cern.ch")
    assert mounted.condor_user == account and "@" not in account
    assert directives["accounting_group_user"] == account
    assert directives["accounting_group"] == f"group_casa.{account}"


def test_htcondor_job_script(mounted, settings):
    """The real dask-jobqueue job script: relative TLS files (transferred), GPU request, resources."""
    from dask_jobqueue import HTCondorCluster

    kw = htcondor_kwargs(ClusterOptions("htcondor", 1, 1, 2**30, 1), mounted, settings)
    kw["scheduler_options"] = {"dashboard_address": None, "host": "127.0.0.1"}
    with HTCondorCluster(**kw) as cluster:
        script = cluster.job_script()
    assert "request_gpus = 1" in script and "accounting_group = group_casa.alice" in script
    assert "--tls-ca-file ca.pem" in script and "--tls-key worker.key" in script
    assert "--resources GPU=1" in script
    assert str(mounted.directory / "dask/worker.key") not in script.split("transfer_input_files")[0]


def test_htcondor_refused_without_token(bundle_dir, settings):
    os.unlink(bundle_dir / "condor-tokens/casa")
    with pytest.raises(CredentialError, match="HTCondor IDTOKEN"):
        htcondor_kwargs(ClusterOptions("htcondor"), MountedBundle.from_directory(bundle_dir), settings)


def test_gateway_options():
    assert gateway_options(ClusterOptions("gateway", 2, 2, 3 * 2**30, 1)) == {
        "worker_cores": 2,
        "worker_memory": 3.0,
        "worker_gpus": 1,
    }
    assert "worker_gpus" not in gateway_options(ClusterOptions("gateway"))


async def test_htcondor_commands_run_with_the_users_token_dir(mounted, settings, bundle_dir):
    job_cls = htcondor_kwargs(ClusterOptions("htcondor"), mounted, settings)["job_cls"]
    out = await job_cls._call(["sh", "-c", "echo $_CONDOR_SEC_TOKEN_DIRECTORY"])
    assert out.strip() == str(bundle_dir / "condor-tokens")


def test_a_fixed_scheduler_address_for_the_login_cluster(mounted, settings):
    from casa_hub_ext.factory import local_kwargs

    opts = ClusterOptions("htcondor", 1, 1, 2**30, 0)
    settings.htcondor_scheduler_options = {"contact_address": "tls://jupyter-alice.casa:8786"}
    options = htcondor_kwargs(opts, mounted, settings, ("0.0.0.0", 8786))["scheduler_options"]
    assert options == {
        "dashboard_address": "127.0.0.1:0",
        "contact_address": "tls://jupyter-alice.casa:8786",
        "host": "0.0.0.0",
        "port": 8786,
    }
    assert "port" not in htcondor_kwargs(opts, mounted, settings)["scheduler_options"]
    local = local_kwargs(ClusterOptions("local", 1), mounted, ("0.0.0.0", 8786))
    assert local["scheduler_kwargs"] == {"host": "0.0.0.0", "port": 8786} and local["host"] == "127.0.0.1"
    with pytest.raises(OptionError, match="a gateway cluster cannot have a fixed scheduler address"):
        from casa_hub_ext.factory import make_cluster

        make_cluster(
            {"backend": "gateway"},
            mounted,
            settings=settings,
            inventory=declared_gpus(0),
            scheduler_address=("0.0.0.0", 8786),
        )
