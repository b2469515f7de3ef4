"""Suite-wide: import kafka-python once with its import-time deprecation noise (its schema loader uses
``importlib.resources.read_text``) silenced, so test reports show only warnings about our code."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka  # noqa: F401 -- imported for the side effect of loading its protocol schemas quietly
