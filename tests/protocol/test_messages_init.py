"""The quick ``__init__`` every message class gets behaves as the dataclass one did.

``kvsync.protocol.messages._quick_init`` replaces the generated ``__init__`` of each frozen
message class with one that fills the slots through their member descriptors. Same
signature, same attributes, same errors for bad calls, still frozen, still replaceable,
same ``repr``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import message_strategy

from kvsync.protocol import messages
from kvsync.protocol.messages import MESSAGE_OF

_ALL = sorted(set(MESSAGE_OF.values()), key=lambda c: c.__name__)
WITH_FIELDS = [c for c in _ALL if dataclasses.fields(c)]
WITHOUT_FIELDS = [c for c in _ALL if not dataclasses.fields(c)]


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _values(cls: type) -> dict[str, str]:
    """A distinct value per field (the ``__init__`` checks no types)."""
    return {name: f"{cls.__name__}.{name}#{i}" for i, name in enumerate(_names(cls))}


def _reference(cls: type, values: dict[str, Any]) -> Any:
    """The instance the dataclass ``__init__`` would have made."""
    obj = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


def test_every_message_class_is_covered() -> None:
    assert len(WITH_FIELDS) >= 30 and len(WITHOUT_FIELDS) >= 4
    assert {messages.Set, messages.Get, messages.PSPush, messages.ErrorReply} <= set(WITH_FIELDS)


@pytest.mark.parametrize("cls", WITH_FIELDS, ids=lambda c: c.__name__)
def test_the_quick_init_is_installed_with_the_original_identity(cls: type) -> None:
    init = cls.__init__  # type: ignore[misc]
    assert init.__code__.co_filename == "<string>"  # built by _quick_init
    assert init.__qualname__ == f"{cls.__name__}.__init__"
    assert init.__module__ == messages.__name__


@pytest.mark.parametrize("cls", WITH_FIELDS, ids=lambda c: c.__name__)
def test_the_signature_lists_the_fields_in_order(cls: type) -> None:
    params = inspect.signature(cls).parameters
    assert list(params) == _names(cls)
    for param in params.values():
        assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert param.default is inspect.Parameter.empty
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    assert {name: p.annotation for name, p in params.items()} == fields


@pytest.mark.parametrize("cls", WITH_FIELDS, ids=lambda c: c.__name__)
def test_positional_and_keyword_construction_agree(cls: type) -> None:
    values = _values(cls)
    by_position = cls(*values.values())
    by_keyword = cls(**values)
    by_keyword_reversed = cls(**dict(reversed(values.items())))
    for name, value in values.items():
        assert getattr(by_position, name) is value
        assert getattr(by_keyword, name) is value
    assert by_position == by_keyword == by_keyword_reversed == _reference(cls, values)
    assert hash(by_position) == hash(by_keyword)
    assert dataclasses.astuple(by_position) == tuple(values.values())
    other = dict(values)
    other[_names(cls)[-1]] = "different"
    assert cls(**other) != by_position


@pytest.mark.parametrize("cls", WITH_FIELDS, ids=lambda c: c.__name__)
def test_wrong_arguments_raise_type_error(cls: type) -> None:
    values = _values(cls)
    names = _names(cls)
    args = list(values.values())
    with pytest.raises(TypeError):
        cls()
    with pytest.raises(TypeError):
        cls(*args[:-1])  # one missing
    with pytest.raises(TypeError):
        cls(**{n: values[n] for n in names[1:]})  # the first missing
    with pytest.raises(TypeError):
        cls(*args, "extra")
    with pytest.raises(TypeError):
        cls(**values, not_a_field=1)
    with pytest.raises(TypeError):
        cls(*args, **{names[0]: args[0]})  # given twice


@pytest.mark.parametrize("cls", WITH_FIELDS, ids=lambda c: c.__name__)
def test_instances_stay_frozen(cls: type) -> None:
    obj = cls(**_values(cls))
    for name in _names(cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, "changed")
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(obj, name)
        assert getattr(obj, name) == _values(cls)[name]
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        obj.not_a_field = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", WITH_FIELDS, ids=lambda c: c.__name__)
def test_replace_copy_and_pickle_work(cls: type) -> None:
    values = _values(cls)
    obj = cls(**values)
    for name in _names(cls):
        changed = dataclasses.replace(obj, **{name: "new"})
        assert type(changed) is cls
        assert getattr(changed, name) == "new"
        assert {n: getattr(changed, n) for n in values if n != name} == {
            n: v for n, v in values.items() if n != name
        }
        assert getattr(obj, name) == values[name]  # the original is unchanged
    assert dataclasses.replace(obj) == obj
    assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj
    assert pickle.loads(pickle.dumps(obj)) == obj


@pytest.mark.parametrize("cls", WITH_FIELDS, ids=lambda c: c.__name__)
def test_repr_is_the_dataclass_format(cls: type) -> None:
    values = _values(cls)
    fields = ", ".join(f"{name}={value!r}" for name, value in values.items())
    assert repr(cls(**values)) == f"{cls.__name__}({fields})"


@pytest.mark.parametrize("cls", WITHOUT_FIELDS, ids=lambda c: c.__name__)
def test_classes_without_fields_keep_their_own_init(cls: type) -> None:
    assert list(inspect.signature(cls).parameters) == []
    assert cls() == cls() and repr(cls()) == f"{cls.__name__}()"
    with pytest.raises(TypeError):
        cls(1)


@given(st.sampled_from(WITH_FIELDS).flatmap(message_strategy))
def test_strategy_messages_rebuild_from_their_fields(msg: Any) -> None:
    cls = type(msg)
    values = [getattr(msg, name) for name in _names(cls)]
    for rebuilt in (cls(*values), cls(**dict(zip(_names(cls), values, strict=True)))):
        assert all(getattr(rebuilt, n) is v for n, v in zip(_names(cls), values, strict=True))
