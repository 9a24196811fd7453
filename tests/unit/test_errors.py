from __future__ import annotations

from comfy_worker import errors


def test_every_error_is_retryable_or_not_by_class() -> None:
    assert errors.StoreUnavailable("x").retryable
    assert not errors.LeaseLost("x").retryable
    assert not errors.WorkflowInvalid("x").retryable
    assert errors.ExecutionTimeout("x").retryable
    assert errors.ExecutionFailed("x", retryable=True).retryable
    assert not errors.ExecutionFailed("x").retryable


def test_sqlstates_map_to_classes_without_reading_messages() -> None:
    assert isinstance(errors.store_error_for("CW001", "anything"), errors.LeaseLost)
    assert isinstance(errors.store_error_for("CW003", "anything"), errors.WorkerNotFound)
    missing = errors.store_error_for("42883", "function claim_tasks does not exist")
    assert isinstance(missing, errors.SchemaMissing)
    assert "comfy-worker migrate" in str(missing)
    assert type(errors.store_error_for("XX000", "internal")) is errors.StoreError


def test_unknown_exceptions_are_retried_not_fatal() -> None:
    assert errors.is_retryable(RuntimeError("surprise"))
    assert not errors.is_retryable(errors.InputRejected("private url"))
