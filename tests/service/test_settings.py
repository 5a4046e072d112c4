import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEXCODE_API_KEYS", " key-one , key-two,")
    monkeypatch.setenv("FLEXCODE_BACKEND", "onnx")
    monkeypatch.setenv("FLEXCODE_BATCH_MAX_WAIT_MS", "5")
    monkeypatch.setenv("FLEXCODE_REDIS_URL", "redis://example:6379/0")
    s = Settings()
    assert s.api_keys == ["key-one", "key-two"]
    assert s.backend == "onnx" and s.batch_max_wait_ms == 5.0 and s.redis_enabled


def test_defaults_are_embedded_development() -> None:
    s = Settings()
    assert not s.redis_enabled and s.environment == "development" and s.api_keys == []
    assert (s.max_history, s.max_k, s.max_beam_width, s.max_items_per_request) == (
        200, 100, 200, 256,
    )  # fmt: skip


def test_production_requires_real_keys() -> None:
    with pytest.raises(ValidationError, match="FLEXCODE_API_KEYS is required"):
        Settings(environment="production")
    with pytest.raises(ValidationError, match="placeholder or short"):
        Settings(environment="production", api_keys=["changeme"])
    assert Settings(environment="production", api_keys=["x" * 32]).api_keys == ["x" * 32]


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(backend="tensorflow")
    with pytest.raises(ValidationError):
        Settings(batch_max_size=0)
