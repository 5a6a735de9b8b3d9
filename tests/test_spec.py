"""The job spec: what is accepted, what is inferred, and what a bad spec is told."""

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from lrbs.contract.job_spec import JobSpec
from lrbs.service.errors import Unprocessable
from lrbs.service.limits import check_limits
from lrbs.service.settings import Settings
from tests.conftest import MINIMAL_SPEC


def spec(**changes) -> dict:
    return {**MINIMAL_SPEC, **changes}


def errors_of(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    return str(info.value)


def test_minimal_spec_gets_every_default():
    job = JobSpec.model_validate({k: v for k, v in MINIMAL_SPEC.items() if k != "device"})
    assert job.loss == "cross_entropy"  # inferred from classification data
    assert job.schedule == "one_cycle"
    assert (job.lr_range.min_lr, job.lr_range.max_lr, job.lr_range.num_steps) == (1e-7, 10.0, 100)
    assert job.lr_range.mode == "exponential" and job.lr_range.smoothing == 0.98
    assert job.lr_range.diverge_factor == 4.0
    assert job.device == "auto" and job.seed == 0 and job.batch_sizes is None
    assert job.model.params.in_features is None  # inferred by the worker from the dataset


def test_regression_data_defaults_to_mse():
    job = JobSpec.model_validate(spec(dataset={"name": "synthetic_regression"}))
    assert job.loss == "mse"
    assert job.dataset.shape().task == "regression"


def test_documented_examples_are_valid():
    for example in JobSpec.model_config["json_schema_extra"]["examples"]:
        JobSpec.model_validate(example)


def test_unknown_fields_are_rejected_at_every_level():
    assert "Extra inputs are not permitted" in errors_of(spec(learning_rate=0.1))
    assert "Extra inputs are not permitted" in errors_of(spec(lr_range={"min_lr": 1e-6, "steps": 10}))
    assert "Extra inputs are not permitted" in errors_of(spec(model={"name": "mlp", "params": {"width": 3}}))


def test_unknown_names_list_what_is_accepted():
    message = errors_of(spec(model={"name": "resnet9000"}))
    assert "linear" in message and "mlp" in message and "cnn" in message
    assert "sgd" in errors_of(spec(optimizer={"name": "lion"}))


def test_lr_bounds_are_ordered():
    assert "must be below max_lr" in errors_of(spec(lr_range={"min_lr": 1.0, "max_lr": 0.1}))
    assert "greater than 0" in errors_of(spec(lr_range={"min_lr": 0}))
    assert "greater than or equal to 5" in errors_of(spec(lr_range={"num_steps": 2}))


def test_optimizer_params_checked_against_torch():
    message = errors_of(spec(optimizer={"name": "adam", "params": {"momentum": 0.9}}))
    assert "adam does not take momentum" in message and "betas" in message
    assert "momentum must be a finite number ≥ 0, got -1" in errors_of(
        spec(optimizer={"name": "sgd", "params": {"momentum": -1}})
    )
    assert "sgd does not take lr" in errors_of(spec(optimizer={"name": "sgd", "params": {"lr": 0.1}}))
    ok = JobSpec.model_validate(spec(optimizer={"name": "adamw", "params": {"betas": [0.9, 0.95]}}))
    assert ok.optimizer.params["betas"] == [0.9, 0.95]


def test_loss_must_fit_the_data():
    message = errors_of(spec(loss="mse"))
    assert "does not fit classification" in message and "cross_entropy" in message


def test_cnn_needs_images():
    assert "cnn needs image data" in errors_of(spec(model={"name": "cnn"}))
    JobSpec.model_validate(spec(model={"name": "cnn"}, dataset={"name": "synthetic_images"}))


def test_explicit_sizes_must_agree_with_the_data():
    message = errors_of(spec(model={"name": "linear", "params": {"in_features": 7}}))
    assert "in_features is 7 but the dataset gives 20" in message


def test_batch_sizes_are_positive_and_distinct():
    assert "distinct" in errors_of(spec(batch_sizes=[32, 32]))
    assert "greater than 0" in errors_of(spec(batch_sizes=[0, 32]))
    assert JobSpec.model_validate(spec(batch_sizes=[64, 16])).batch_sizes == [16, 64]


def test_operator_limits_name_the_field_and_the_setting():
    job = JobSpec.model_validate(spec(lr_range={"num_steps": 500}, batch_sizes=[8, 4096]))
    check_limits(job, Settings(max_lr_steps=1000))
    with pytest.raises(Unprocessable) as info:
        check_limits(job, Settings(max_lr_steps=100, max_batch_size=1024))
    fields = [e["field"] for e in info.value.extra["errors"]]
    assert fields == ["lr_range.num_steps", "batch_sizes.1"]
    assert "LRBS_MAX_LR_STEPS" in info.value.detail


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"maximize": "yes"}, "maximize must be true or false"),
        ({"foreach": 1}, "foreach must be true, false or null"),
        ({"momentum": "0.9"}, "momentum must be a finite number"),
        ({"nesterov": True}, "nesterov needs momentum > 0 and dampening 0"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov needs momentum > 0 and dampening 0"),
    ],
)
def test_sgd_params_are_type_checked_without_torch(params, expected):
    assert expected in errors_of(spec(optimizer={"name": "sgd", "params": params}))


@pytest.mark.parametrize("betas", [[0.9], [0.9, 1.0], [-0.1, 0.9], "0.9,0.99"])
def test_adam_betas_must_be_two_numbers_in_the_unit_interval(betas):
    assert "betas must be two numbers in [0, 1)" in errors_of(
        spec(optimizer={"name": "adam", "params": {"betas": betas}})
    )


def test_the_optimizer_table_matches_the_installed_torch():
    """optimizer_keywords.json is derived from torch; regenerate it with `python -m lrbs.contract.optimizers`."""
    from lrbs.contract import optimizers

    stored = json.loads(optimizers.TABLE_FILE.read_text())["optimizers"]
    assert stored == optimizers._derive_table()


def test_every_accepted_optimizer_spec_builds_in_torch():
    """What the contract accepts without torch, torch accepts too (so the worker never refuses it)."""
    import torch

    from lrbs.contract.optimizers import OPTIMIZER_CLASSES

    cases = {
        "sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4, "maximize": False, "foreach": None},
        "adam": {"betas": [0.8, 0.99], "eps": 1e-6, "amsgrad": True},
        "adamw": {"betas": [0.9, 0.95], "weight_decay": 0.1},
        "rmsprop": {"alpha": 0.9, "momentum": 0.5, "centered": True},
        "adagrad": {"lr_decay": 0.01, "initial_accumulator_value": 0.1},
    }
    for name, params in cases.items():
        job = JobSpec.model_validate(spec(optimizer={"name": name, "params": params}))
        cls = getattr(torch.optim, OPTIMIZER_CLASSES[name])
        cls([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, **job.optimizer.params)


def test_the_contract_and_the_service_import_without_torch():
    """The first request must not wait for torch: neither the contract nor the app loads it."""
    code = "import sys, lrbs.contract.job_spec, lrbs.contract.results, lrbs.service.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_range_test_records_the_training_loss_unless_asked():
    job = JobSpec.model_validate(spec())
    assert (job.lr_range.loss, job.lr_range.val_batches) == ("training", None)
    job = JobSpec.model_validate(spec(lr_range={"loss": "validation", "val_batches": 16}))
    assert (job.lr_range.loss, job.lr_range.val_batches) == ("validation", 16)
    job = JobSpec.model_validate(spec(lr_range={"loss": "validation"}))
    assert job.lr_range.val_batches == 4
    for stored in (job, JobSpec.model_validate(spec())):  # a stored spec is read back as it was submitted
        assert JobSpec.model_validate(stored.model_dump(mode="json")) == stored


@pytest.mark.parametrize(
    ("lr_range", "expected"),
    [
        ({"loss": "val"}, "Input should be 'training' or 'validation'"),
        ({"loss": "validation", "val_batches": 0}, "greater than or equal to 1"),
        ({"loss": "validation", "val_batches": 257}, "less than or equal to 256"),
        ({"loss": "validation", "val_batches": 2.5}, "valid integer"),
        ({"val_batches": 8}, 'val_batches applies only with loss "validation"'),
        ({"loss": "training", "val_batches": 8}, 'val_batches applies only with loss "validation"'),
    ],
)
def test_bad_validation_sweep_settings_say_what_is_accepted(lr_range, expected):
    assert expected in errors_of(spec(lr_range=lr_range))


def test_a_validation_sweep_needs_validation_samples():
    data = {"name": "synthetic_classification", "params": {"n_samples": 512}, "validation_fraction": 0}
    message = errors_of(spec(dataset=data, lr_range={"loss": "validation"}))
    assert "dataset.validation_fraction is 0" in message and "above 0" in message
    JobSpec.model_validate(spec(dataset=data))  # the training loss needs none
