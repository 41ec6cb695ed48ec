"""The client's own errors: raised before anything is sent, so a bad table never reaches the server."""

from __future__ import annotations


class ClientError(ValueError):
    """Base of every error skewless.client raises for bad input (tables, models, labels)."""


class NotAFeatureModel(ClientError):
    """The model's inputs are not one raw column each (no feature spec behind it)."""


class MissingColumn(ClientError):
    """The table lacks a raw input the model needs."""


class UnsendableColumn(ClientError):
    """A column's values cannot be sent as the model's datatype (or at all)."""


class MissingValuesRefused(ClientError):
    """A column holds nulls but the model offers no ``NAME__missing`` companion input for it."""


def require(module: str, extra: str = "client"):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"skewless.client needs {module.split('.')[0]} for this: "
                          f"pip install 'skewless[{extra}]'") from None
