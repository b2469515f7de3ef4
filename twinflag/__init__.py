"""twinflag's public Python API: check a post against an index, add it, delete it, scan many.

    from twinflag import Detector

    with Detector.open("models/default", "data/index") as detector:
        decision = detector.check("Free iPhone, click here", tenant="forum")
        if decision.flagged:
            print("looks like a repost of", decision.duplicate_of, decision.score)

Everything goes through the worker's own batch step (``worker.core.step``), so a decision here is the
one the stream would make: the same normalisation and hashing, the exact path, the model's threshold or
calibration, the same stored form. ``check`` is read-only. The rest of the package (``worker``,
``trainer``) is not a stable interface.
"""

from __future__ import annotations

from twinflag.detector import Decision, Detector, InvalidDocumentError, InvalidVerdictError, Match

__version__ = "0.1.0"
__all__ = ["Decision", "Detector", "InvalidDocumentError", "InvalidVerdictError", "Match", "__version__"]
