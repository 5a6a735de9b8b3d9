"""Plugins: a worker runs team code only from modules its operator allow-listed."""

import sys

import pytest

from lrbs.contract.job_spec import JobSpec
from lrbs.worker.advise import advise
from lrbs.worker.capabilities import describe
from lrbs.worker.errors import JobError
from lrbs.worker.plugins import PluginPolicy

ALLOWED = PluginPolicy.parse("lrbs_test_plugins")
SMALL_RANGE = {"num_steps": 30, "batch_size": 32}


def plugin_spec(**parts) -> JobSpec:
    spec = {
        "model": {"source": "plugin", "name": "lrbs_test_plugins.models:tiny_mlp", "params": {"hidden": 8}},
        "dataset": {"source": "plugin", "name": "lrbs_test_plugins.data:blobs"},
        "optimizer": {"name": "sgd"},
        "device": "cpu",  # the tests assume the CPU: auto picks a GPU where one is
        "lr_range": SMALL_RANGE,
        **parts,
    }
    return JobSpec.model_validate(spec)


def test_policy_matches_module_prefixes():
    policy = PluginPolicy.parse(" team , other.sub ")
    assert policy.modules == ("team", "other.sub")
    assert policy.allows("team") and policy.allows("team.vision") and policy.allows("other.sub.x")
    assert not policy.allows("teammate") and not policy.allows("other")
    assert PluginPolicy.parse("").modules == ()


def test_allowed_plugins_run_a_whole_job(with_plugins):
    spec = plugin_spec(
        loss={
            "source": "plugin",
            "name": "lrbs_test_plugins.losses:smooth_cross_entropy",
            "params": {"smoothing": 0.05},
        },
        optimizer={"source": "plugin", "name": "lrbs_test_plugins.optim:nesterov", "params": {"momentum": 0.8}},
    )
    result = advise(spec, policy=ALLOWED)
    assert result.steps_run > 0 and result.recommendation is not None
    smoothed = result.curve.smoothed_loss
    assert min(smoothed) < 0.9 * smoothed[0]  # the plugin loss and optimizer really trained the model
    assert result.curve.lr[0] <= result.recommendation.lr <= result.curve.lr[-1]


def test_a_torch_dataset_plugin_and_the_default_loss(with_plugins):
    spec = plugin_spec(
        dataset={"source": "plugin", "name": "lrbs_test_plugins.data:torch_blobs", "params": {"classes": 4}}
    )
    assert spec.loss is None  # plugin data: the worker picks the loss once it sees the labels
    result = advise(spec, policy=ALLOWED)
    assert spec.loss == "cross_entropy" and result.steps_run > 0


def test_a_module_not_allow_listed_is_refused_and_never_imported(with_plugins):
    spec = plugin_spec(model={"source": "plugin", "name": "lrbs_test_evil:model"})
    with pytest.raises(JobError, match="does not allow.*LRBS_PLUGIN_MODULES"):
        advise(spec, policy=ALLOWED)
    with pytest.raises(JobError, match="allows nothing"):
        advise(plugin_spec(), policy=PluginPolicy())
    assert not with_plugins.exists() and "lrbs_test_evil" not in sys.modules


def test_a_re_export_in_an_allowed_package_is_refused_before_it_runs(with_plugins, tmp_path):
    """`lrbs_test_plugins:system` is os.system re-exported: the allow-list checks where the code lives."""
    mark = tmp_path / "ran"
    spec = plugin_spec(model={"source": "plugin", "name": "lrbs_test_plugins:system", "params": {}})
    spec.model.params["command"] = f"touch {mark}"
    with pytest.raises(JobError, match="defined in module 'posix'.*does not allow"):
        advise(spec, policy=ALLOWED)
    assert not mark.exists()


def test_entry_points_are_found_by_name(with_plugins):
    spec = plugin_spec(
        model={"source": "plugin", "name": "team-mlp"},
        dataset={"source": "plugin", "name": "team-blobs"},
        loss={"source": "plugin", "name": "team-smooth-ce"},
        optimizer={"source": "plugin", "name": "team-nesterov"},
    )
    assert advise(spec, policy=ALLOWED).steps_run > 0
    with pytest.raises(JobError, match="lrbs_test_evil"):  # an entry point is checked before it is loaded
        advise(plugin_spec(model={"source": "plugin", "name": "evil"}), policy=ALLOWED)
    assert not with_plugins.exists()
    with pytest.raises(JobError, match="no model plugin named 'nope'.*team-mlp"):
        advise(plugin_spec(model={"source": "plugin", "name": "nope"}), policy=ALLOWED)


def test_plugin_mistakes_fail_with_a_message(with_plugins):
    with pytest.raises(JobError, match="not a torch nn.Module"):
        advise(plugin_spec(model={"source": "plugin", "name": "lrbs_test_plugins.models:not_a_model"}), policy=ALLOWED)
    with pytest.raises(JobError, match="does not take these arguments"):
        advise(
            plugin_spec(
                model={"source": "plugin", "name": "lrbs_test_plugins.models:tiny_mlp", "params": {"depth": 3}}
            ),
            policy=ALLOWED,
        )
    with pytest.raises(JobError, match="cannot load"):
        advise(plugin_spec(model={"source": "plugin", "name": "lrbs_test_plugins.models:missing"}), policy=ALLOWED)


def test_spec_rejects_malformed_plugin_names():
    with pytest.raises(ValueError, match="should match pattern"):
        plugin_spec(model={"source": "plugin", "name": "os.system('rm -rf')"})


def test_capabilities_list_only_allowed_entry_points(with_plugins):
    info = describe(ALLOWED)
    assert info.plugins["model"] == ["team-mlp"]  # "evil" is installed but not allowed
    assert info.plugins["optimizer"] == ["team-nesterov"]
    assert "resnet" in info.builtins["models"] and "iris" in info.builtins["datasets"]
    assert info.devices[0].name == "cpu" and "bf16" in info.precisions
