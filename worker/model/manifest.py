"""``manifest.json``: what a model directory holds and what its model is. No torch here, on purpose.

A model directory holds exactly these files, and loading reads nothing else::

    manifest.json      what the model is (``Manifest``): architecture, dimension, max tokens,
                       thresholds, base model, training-data fingerprints, dev metrics, version
    model.safetensors  the weights (safetensors only: loading never unpickles)
    tokenizer.json     a Hugging Face ``tokenizers`` tokenizer (both architectures)
    config.json        the transformer's config (``transformer`` only): BERT, RoBERTa family or MPNet
    model.onnx         instead of the safetensors, for ``precision: int8``: the transformer quantised
                       to int8 and run by ONNX Runtime (``trainer quantize``; ``worker.model.onnx``)

Other files (a report, plots) may sit beside them (``worker.model.directory`` checks what may). The
model version is ``<architecture>-<first 12 hex digits of the weights' sha256>`` (``<architecture>-int8-…``
for a quantised copy, whose vectors differ slightly and so belong in their own collection); the loader
checks it against the weights, so a version stamped on a flag or an index names exactly one vector space.

Reading a pair file or a manifest must not cost a torch import: the trainer's data code, the worker's
settings command and the benches read manifests, only loading a module needs torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from worker.core.errors import TwinflagError
from worker.core.policy import Calibration, PairCalibration, Policy

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
ONNX_FILE = "model.onnx"
# Formats that can carry a pickle (torch.save, joblib, numpy object arrays): refused by suffix.
PICKLE_SUFFIXES = frozenset(
    {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".dill", ".h5"}
)
# Everything else that may sit in a model directory; any other suffix is refused too, so a pickle under
# a name nobody thought of (``weights.model``) cannot slip through.
# An ONNX file is a protobuf graph of standard operators: ONNX Runtime loads it without running code.
ALLOWED_SUFFIXES = frozenset({".json", ".safetensors", ".onnx", ".md", ".png", ".txt"})

Architecture = Literal["transformer", "bilstm", "static"]
ModelType = Literal["bert", "roberta", "xlm-roberta", "camembert", "mpnet"]
"""The ``config.json`` model types a transformer may be: ``worker.model.bert`` runs the first four,
``worker.model.mpnet`` the last."""
Precision = Literal["float32", "int8"]


class ModelFormatError(TwinflagError):
    """The model directory is missing a file, or a file does not say what the manifest says."""


class UnsafeModelError(ModelFormatError):
    """The model directory holds something that could run code when loaded (a pickle, a symlink)."""


# ---------------------------------------------------------------------------------------------
# The manifest


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Bounds far above any model a worker can run, so that a manifest cannot make the loader allocate
# without limit or the first batch index past a table: a manifest is trusted no further than these,
# and ``worker.model.directory`` checks the rest against config.json, the tokenizer and the weights.
MAX_WIDTH = 16_384
MAX_TOKENS = 8_192
MAX_VOCAB = 2_000_000
MAX_LAYERS = 128


class TransformerParams(_Frozen):
    """A summary of ``config.json`` (which stays the source of truth for building the stack)."""

    kind: Literal["transformer"] = "transformer"
    model_type: ModelType | None = Field(
        default=None, description="config.json's model_type (None: written before manifests recorded it)."
    )
    hidden_size: int = Field(gt=0, le=MAX_WIDTH)
    num_hidden_layers: int = Field(gt=0, le=MAX_LAYERS)
    num_attention_heads: int = Field(gt=0, le=MAX_WIDTH)
    intermediate_size: int = Field(gt=0, le=4 * MAX_WIDTH)
    vocab_size: int = Field(gt=0, le=MAX_VOCAB)


class BiLSTMParams(_Frozen):
    """Everything needed to rebuild a ``BiLSTMEncoder`` before loading its weights."""

    kind: Literal["bilstm"] = "bilstm"
    vocab_size: int = Field(gt=0, le=MAX_VOCAB)
    embedding_dim: int = Field(gt=0, le=MAX_WIDTH)
    hidden_size: int = Field(gt=0, le=MAX_WIDTH)
    num_layers: int = Field(default=1, gt=0, le=MAX_LAYERS)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class StaticParams(_Frozen):
    """A static encoder (``worker.model.static``): one embedding table, no layers, run in numpy.

    Rows ``[0, vocab_size)`` embed the tokenizer's WordPiece ids; rows ``[vocab_size, vocab_size +
    buckets)`` embed hashed character n-grams (of each size in ``ngrams``) of the folded text.
    """

    kind: Literal["static"] = "static"
    vocab_size: int = Field(gt=0, le=MAX_VOCAB)
    buckets: int = Field(gt=0, le=MAX_VOCAB)
    ngrams: tuple[int, ...] = Field(min_length=1, description="Character n-gram sizes hashed into buckets.")
    embedding_dim: int = Field(gt=0, le=MAX_WIDTH)
    lexical_dim: int = Field(
        default=0, ge=0, description="The last columns, the n-gram rows' alone (0: one shared space)."
    )
    lexical_weight: float = Field(
        default=0.0, ge=0, le=1, description="The lexical part's share of the cosine (with lexical_dim)."
    )

    @model_validator(mode="after")
    def _sizes(self) -> StaticParams:
        if any(not 1 <= n <= 8 for n in self.ngrams):
            raise ValueError(f"n-gram sizes {self.ngrams} outside 1..8")
        if self.lexical_dim >= self.embedding_dim:
            raise ValueError(f"lexical_dim {self.lexical_dim} leaves no columns of {self.embedding_dim}")
        return self


class Thresholds(_Frozen):
    """Cosine thresholds: ``decision`` is what the worker flags at (score ≥ decision)."""

    decision: float = Field(ge=-1, le=1, description="Flag when cosine ≥ this.")
    target_precision: float | None = Field(
        default=None, description="Precision the decision threshold was chosen to meet on the dev set."
    )
    precision: float | None = Field(default=None, description="Dev precision at the decision threshold.")
    recall: float | None = Field(default=None, description="Dev recall at the decision threshold.")
    best_f1: float | None = Field(default=None, description="Best F1 on the dev set.")
    best_f1_threshold: float | None = Field(default=None, description="Threshold that gives best_f1.")
    calibrated_on: str | None = Field(
        default=None,
        description="Pairs the thresholds were chosen on (the dev file, or without one the training "
        "files' selection slices); None: an uncalibrated default.",
    )


class CalibrationKnots(_Frozen):
    """A score → P(duplicate) map: increasing scores, non-decreasing probabilities (an isotonic fit)."""

    scores: list[float] = Field(min_length=1)
    probabilities: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _monotone(self) -> CalibrationKnots:
        if len(self.scores) != len(self.probabilities):
            raise ValueError("as many probabilities as scores")
        if any(b < a for a, b in zip(self.scores, self.scores[1:], strict=False)):
            raise ValueError("calibration scores must increase")
        if any(not 0 <= p <= 1 for p in self.probabilities):
            raise ValueError("probabilities lie in [0, 1]")
        return self


class PairLogistic(_Frozen):
    """P(duplicate) = σ(cosine · ``cosine`` + verifier score · ``score`` + ``bias``)."""

    cosine: float
    score: float
    bias: float


class StreamDecision(_Frozen):
    """The shipped decision of a calibrated model: flag when P(duplicate) ≥ ``point``.

    Chosen on a repost stream the trainer simulates (each post compared with every earlier one, the
    best candidate deciding), for ``target_precision``; ``precision`` and ``recall`` were reached there.
    """

    point: float = Field(gt=0, le=1, description="Flag when the calibrated probability ≥ this.")
    encoder: CalibrationKnots = Field(description="The encoder's cosine → P(duplicate).")
    target_precision: float = Field(gt=0, le=1)
    precision: float | None = None
    recall: float | None = None
    verifier_share: float | None = Field(default=None, description="Share of posts the verifier judged.")
    calibrated_on: str = Field(description="What the stream was simulated from.")
    posts: int = Field(ge=0, description="Posts in the simulated stream.")


class VerifierSection(_Frozen):
    """A verifier (pair classifier) in the directory: ``verifier.safetensors`` + ``verifier_config.json``."""

    version: str = Field(description="verifier-<12 hex of sha256(verifier.safetensors)>.")
    layers: int = Field(gt=0, le=MAX_LAYERS)
    max_tokens: int = Field(gt=2, le=MAX_TOKENS, description="Tokens of a pair, both posts together.")
    band: tuple[float, float] = Field(description="Encoder cosines [lo, hi) the verifier decides.")
    calibration: PairLogistic = Field(description="The cosine and the verifier's score → P(duplicate).")
    verify_top: int = Field(default=2, ge=1, le=16, description="Candidates verified per post, at most.")
    keep_text: int = Field(default=2000, ge=1, description="Characters of each post the index keeps for it.")
    base_model: str | None = None
    training: dict[str, JsonValue] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _band(self) -> VerifierSection:
        if not -1 <= self.band[0] < self.band[1] <= 1.000001:
            raise ValueError(f"band {self.band} is not a cosine range")
        return self


class DataFingerprint(_Frozen):
    """Which data a model saw: enough to tell two training sets apart without shipping them."""

    name: str = Field(description="File name as given (relative paths stay relative).")
    sha256: str
    rows: int = Field(ge=0, description="Rows read (header excluded).")
    bad_rows: int = Field(default=0, ge=0, description="Rows skipped as malformed.")
    used_rows: int | None = Field(default=None, ge=0, description="Rows used (after any hold-out).")


class Manifest(_Frozen):
    """``manifest.json``. ``version`` is filled in by ``save_model_dir`` from the weights' hash."""

    format_version: Literal[1] = 1
    version: str = Field(default="", description="<architecture>-<12 hex of sha256(model.safetensors)>.")
    architecture: Architecture
    hyperparameters: TransformerParams | BiLSTMParams | StaticParams = Field(discriminator="kind")
    dim: int = Field(gt=0, le=MAX_WIDTH)
    max_tokens: int = Field(
        gt=0, le=MAX_TOKENS, description="Longer texts are truncated to this many tokens, not rejected."
    )
    normalize: Literal[True] = True
    precision: Precision = Field(
        default="float32",
        description="float32: model.safetensors run by torch; int8: model.onnx (dynamic int8, per-channel "
        "weights) run by ONNX Runtime.",
    )
    pooling: Literal["mean", "mean_max", "cls"]
    pad_token_id: int = Field(default=0, ge=0)
    thresholds: Thresholds
    base_model: str | None = Field(default=None, description="What the weights started from.")
    training_data: list[DataFingerprint] = Field(default_factory=list)
    dev_data: DataFingerprint | None = None
    dev_metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, JsonValue] = Field(default_factory=dict, description="Recipe: loss, lr, steps...")
    stream: StreamDecision | None = Field(
        default=None, description="The calibrated decision; None: flag at ``thresholds.decision``."
    )
    verifier: VerifierSection | None = Field(default=None, description="A verifier for the uncertain band.")
    code_version: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.hyperparameters.kind != self.architecture:
            raise ValueError(f"hyperparameters are for {self.hyperparameters.kind}, not {self.architecture}")
        if self.precision == "int8" and self.architecture != "transformer":
            raise ValueError("only the transformer has an int8 form")
        if self.architecture == "transformer" and self.pooling not in ("mean", "cls"):
            raise ValueError("the transformer encoder pools by mean or cls")
        if self.architecture == "bilstm" and self.pooling != "mean_max":
            raise ValueError("the bilstm encoder pools by mean and max")
        vocab = self.hyperparameters.vocab_size
        if self.pad_token_id >= vocab:
            raise ValueError(f"pad_token_id {self.pad_token_id} is not in the vocabulary ({vocab})")
        if isinstance(self.hyperparameters, StaticParams) and self.hyperparameters.embedding_dim != self.dim:
            raise ValueError(f"dim {self.dim} != embedding_dim {self.hyperparameters.embedding_dim}")
        params = self.hyperparameters
        if isinstance(params, TransformerParams) and params.hidden_size != self.dim:
            raise ValueError(f"dim {self.dim} != hidden_size {params.hidden_size}")
        return self

    @property
    def weights_file(self) -> str:
        """The file that holds the weights: the one the version hashes and the loader reads."""
        return ONNX_FILE if self.precision == "int8" else WEIGHTS_FILE


def calibrated_policy(
    manifest: Manifest, tenant_points: Mapping[str, float] | None = None, *, verify: bool = True
) -> Policy | None:
    """The decision a calibrated model ships (its ``stream`` and, with ``verify``, its ``verifier``
    section) as the core's ``Policy``; None for a model without a calibrated decision."""
    stream, section = manifest.stream, manifest.verifier
    if stream is None:
        return None
    points = dict(tenant_points or {})
    encoder = Calibration(tuple(stream.encoder.scores), tuple(stream.encoder.probabilities))
    if section is None or not verify:
        return Policy(manifest.thresholds.decision, encoder, stream.point, points)
    return Policy(
        manifest.thresholds.decision,
        encoder,
        stream.point,
        points,
        band=section.band,
        verifier=PairCalibration(**section.calibration.model_dump()),
        verify_top=section.verify_top,
    )
