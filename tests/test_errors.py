"""The one exceptions module: its public list names every error it defines, under one root."""

from __future__ import annotations

import inspect

from erp_sync import errors


def test_every_error_the_module_defines_is_exported_and_under_the_root() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert set(errors.__all__) == defined
    assert all(issubclass(getattr(errors, n), errors.ErpSyncError) for n in defined)
