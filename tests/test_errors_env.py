"""Specification of kvsync.errors and kvsync.env."""

from __future__ import annotations

import pytest

from kvsync import env, errors


@pytest.mark.parametrize("code", list(errors.ErrorCode))
def test_every_error_code_round_trips_to_a_kvsync_error(code: errors.ErrorCode) -> None:
    exc = errors.error_from_code(code, "msg")
    assert isinstance(exc, errors.KVSyncError)
    assert str(exc) == "msg"


def test_timeouts_connections_and_caps_subclass_the_builtins() -> None:
    assert issubclass(errors.StoreTimeoutError, TimeoutError)
    assert issubclass(errors.StoreConnectionError, ConnectionError)
    assert issubclass(errors.LimitExceededError, ValueError)
    assert issubclass(errors.UninitializedKeyError, KeyError)


def test_code_for_maps_subclasses_to_their_nearest_known_parent() -> None:
    assert errors.code_for(errors.VersionMismatchError("v")) is errors.ErrorCode.VERSION_MISMATCH
    assert errors.code_for(RuntimeError("x")) is errors.ErrorCode.SERVER
    assert errors.code_for(TypeError("x")) is errors.ErrorCode.KEY_TYPE


def test_env_read_rejects_non_integer_rank_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="RANK"):
        env.read({"RANK": "zero"}).rank  # noqa: B018 (the access is what raises)


def test_env_reads_only_the_variables_used_and_each_once() -> None:
    asked: list[str] = []

    class Counting(dict[str, str]):
        def get(self, key: str, default: str = "") -> str:  # type: ignore[override]
            asked.append(key)
            return super().get(key, default)

    e = env.read(Counting(RANK="3", WORLD_SIZE="zero"))
    assert (e.rank, e.rank, e.master_addr) == (3, 3, None)
    assert asked == ["RANK", "MASTER_ADDR"]  # WORLD_SIZE, bad, is never parsed


def test_env_read_ignores_blank_values() -> None:
    assert env.read({"MASTER_PORT": "  "}).master_port is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True), ("true", True), ("True", True), ("YES", True), ("on", True),
        ("0", False), ("false", False), ("False", False), ("no", False), (" off ", False),
    ],
)  # fmt: skip
def test_env_booleans_take_one_set_of_words_for_every_variable(raw: str, expected: bool) -> None:
    got = env.read({"TORCHELASTIC_USE_AGENT_STORE": raw, "KVSYNC_PS_SHM": raw})
    assert (got.use_agent_store, got.ps_shm) == (expected, expected)


def test_env_booleans_default_when_unset_or_blank() -> None:
    for environ in ({}, {"TORCHELASTIC_USE_AGENT_STORE": " ", "KVSYNC_PS_SHM": ""}):
        got = env.read(environ)
        assert (got.use_agent_store, got.ps_shm) == (False, True)


@pytest.mark.parametrize("name", ["TORCHELASTIC_USE_AGENT_STORE", "KVSYNC_PS_SHM"])
def test_env_boolean_that_is_no_word_we_know_is_refused_naming_it(name: str) -> None:
    # Regression: KVSYNC_PS_SHM=off silently meant "on", and "yes" under torchrun "no".
    attr = {"TORCHELASTIC_USE_AGENT_STORE": "use_agent_store", "KVSYNC_PS_SHM": "ps_shm"}[name]
    with pytest.raises(ValueError, match=rf"{name}='maybe' is not a boolean"):
        getattr(env.read({name: "maybe"}), attr)


def test_env_store_server_takes_thread_or_process_in_any_case() -> None:
    assert env.read({"KVSYNC_STORE_SERVER": " Process "}).store_server == "process"
    assert env.read({"KVSYNC_STORE_SERVER": "THREAD"}).store_server == "thread"
    assert env.read({"KVSYNC_STORE_SERVER": ""}).store_server is None
    with pytest.raises(ValueError, match="KVSYNC_STORE_SERVER='fork' is not one of thread"):
        env.read({"KVSYNC_STORE_SERVER": "fork"}).store_server  # noqa: B018 (access raises)


@pytest.mark.parametrize("raw", ["-1", "nan", "inf", "soon"])
def test_env_store_exit_grace_must_be_finite_seconds_naming_the_variable(raw: str) -> None:
    assert env.read({"KVSYNC_STORE_EXIT_GRACE": "2.5"}).store_exit_grace == 2.5
    with pytest.raises(ValueError, match="KVSYNC_STORE_EXIT_GRACE"):
        env.read({"KVSYNC_STORE_EXIT_GRACE": raw}).store_exit_grace  # noqa: B018
