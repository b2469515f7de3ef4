"""The decision a model ships, chosen where the worker will use it: on a stream of reposts.

A Quora-calibrated threshold answers "are these two questions the same?"; the worker asks something
else: "which, if any, of every earlier post is this one?", where the best of many neighbours decides.
So the trainer simulates a stream from labelled pairs it kept out of training: each pair's first text
is an original; later come its partner when the pair is labelled duplicate (a reworded repost) and
sometimes when it is not (``OTHER_SHARE``: a related post), half the time a spam-edited copy of the
original (a repost), and sometimes a copy with one fact changed (``FACT_SHARE``: a look-alike, from
``trainer.facts``). Every post is compared with every earlier one, as the worker compares it.

On that stream: the encoder's cosine is calibrated to P(duplicate) (isotonic regression:
``Calibration``); the cosine and the verifier's score together by a logistic fit
(``PairCalibration``: the cosine knows overall closeness, the verifier a changed fact). The band where
the verifier decides is chosen so that it judges at most ``max_share`` of the posts, and the decision
point is the lowest probability whose flags are at least ``target_precision`` right. A flag is right
when the post is a repost and names an earlier member of its own cluster.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from trainer.augment import spam_edit
from trainer.data import Pair
from trainer.facts import fact_change
from worker.core.policy import Calibration, PairCalibration, Policy
from worker.core.ports import Candidate
from worker.model.manifest import CalibrationKnots

TOP = 2  # candidates per post the verifier may judge (the worker's ``verify_top``)
EDIT_SHARE = 0.5  # originals reposted with spam-style edits
OTHER_SHARE = 0.3  # labelled non-duplicate partners posted: a related post, not a repost
FACT_SHARE = 0.2  # originals followed by a look-alike with one fact changed


@dataclass(frozen=True)
class Post:
    text: str
    cluster: int
    kind: str = "original"  # original, edit, partner (labelled duplicate), other (labelled not), fact


@dataclass
class Stream:
    """Posts in arrival order and, per post, its earlier candidates (position, cosine), best first."""

    posts: list[Post]
    candidates: list[list[tuple[int, float]]]

    def same(self, i: int, j: int) -> bool:
        return self.posts[i].cluster == self.posts[j].cluster

    def reposts(self) -> int:
        """Posts with an earlier member of their cluster: what a perfect detector flags."""
        seen: set[int] = set()
        count = 0
        for post in self.posts:
            count += post.cluster in seen
            seen.add(post.cluster)
        return count


def simulate(pairs: Sequence[Pair], limit: int, seed: int, names: Sequence[str] = ()) -> list[Post]:
    """Posts made from up to ``limit`` labelled pairs, in arrival order (see the module docstring).

    Clusters follow the texts: one text is one post's text wherever it appears (the same question sits
    in several pairs), a duplicate pair joins its texts' clusters, a spam edit joins its original's.
    """
    rng = random.Random(f"{seed}:stream")  # noqa: S311 - sampling, not secrets
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    def join(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    timed: list[tuple[float, str, str]] = []
    for pair in rng.sample(list(pairs), min(limit, len(pairs))):
        start = rng.random()
        timed.append((start, pair.text_a, "original"))
        if pair.label == 1 or rng.random() < OTHER_SHARE:
            timed.append((start + rng.random() * 0.3, pair.text_b, "partner" if pair.label else "other"))
        if pair.label == 1:
            join(pair.text_a, pair.text_b)
        if rng.random() < EDIT_SHARE:
            edited = spam_edit(pair.text_a, rng)
            timed.append((start + rng.random() * 0.3, edited, "edit"))
            join(pair.text_a, edited)
        changed = fact_change(pair.text_a, rng, names) if rng.random() < FACT_SHARE else None
        if changed is not None:
            timed.append((start + rng.random() * 0.3, changed, "fact"))
    timed.sort(key=lambda item: item[0])
    seen: set[str] = set()
    clusters: dict[str, int] = {}
    posts = []
    for _, text, kind in timed:
        if text in seen:  # a text posted again is an exact copy: the hash path's, not the model's
            continue
        seen.add(text)
        posts.append(Post(text, clusters.setdefault(find(text), len(clusters)), kind))
    return posts


def compare(posts: Sequence[Post], vectors: np.ndarray, k: int = TOP) -> Stream:
    """Each post against every earlier one: its ``k`` best by cosine."""
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    candidates: list[list[tuple[int, float]]] = []
    for i in range(len(posts)):
        earlier = sims[i, :i]
        best = np.argsort(-earlier, kind="stable")[:k]
        candidates.append([(int(j), float(earlier[j])) for j in best])
    return Stream(list(posts), candidates)


def isotonic(scores: Sequence[float], labels: Sequence[int], knots: int = 64) -> Calibration:
    """P(duplicate) as a non-decreasing function of the score, sampled at up to ``knots`` points."""
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    xs = np.unique(np.round(np.quantile(np.asarray(scores, dtype=np.float64), np.linspace(0, 1, knots)), 6))
    ys = np.maximum.accumulate(fit.predict(xs))
    return Calibration(tuple(float(x) for x in xs), tuple(round(float(y), 6) for y in ys))


def logistic(features: Sequence[tuple[float, float]], labels: Sequence[int]) -> PairCalibration:
    """P(duplicate) from (cosine, verifier score): a lightly regularised logistic fit."""
    if len(set(labels)) < 2:  # nothing to separate: the verifier's score says nothing here
        rate = float(np.clip(np.mean(labels) if labels else 0.5, 1e-3, 1 - 1e-3))
        return PairCalibration(0.0, 0.0, float(np.log(rate / (1 - rate))))
    fit = LogisticRegression(C=10.0, max_iter=1000).fit(np.asarray(features, dtype=np.float64), labels)
    (cosine, score), bias = fit.coef_[0], fit.intercept_[0]
    return PairCalibration(round(float(cosine), 6), round(float(score), 6), round(float(bias), 6))


def knots(calibration: Calibration) -> CalibrationKnots:
    return CalibrationKnots(scores=list(calibration.scores), probabilities=list(calibration.probabilities))


@dataclass(frozen=True)
class Outcome:
    precision: float
    recall: float
    flags: int
    verified_share: float


def evaluate(
    stream: Stream, policy: Policy, verified: dict[tuple[int, int], float]
) -> tuple[list[float], list[bool], float]:
    """Per post the decisive probability and whether its decisive candidate is right; and the share of
    posts the verifier judged under ``policy`` (``verified``: its scores by (post, candidate))."""
    probabilities: list[float] = []
    right: list[bool] = []
    judged = 0
    for i, found in enumerate(stream.candidates):
        ranked = [Candidate(str(j), round(score, 6), (0, j), "index") for j, score in found]
        scores: dict[int, float] = {}
        for rank in policy.to_verify(ranked):
            key = (i, int(ranked[rank].doc_id))
            if key in verified:
                scores[rank] = verified[key]
        judged += bool(scores)
        verdict = policy.judge("default", ranked, scores)
        decisive = verdict.decisive
        probabilities.append(verdict.probability if verdict.probability is not None else 0.0)
        right.append(decisive is not None and stream.same(i, int(decisive.doc_id)))
    return probabilities, right, judged / max(len(stream.posts), 1)


def decision_point(
    probabilities: Sequence[float], right: Sequence[bool], reposts: int, target: float
) -> tuple[float, Outcome]:
    """The lowest probability whose flags are at least ``target`` right (the most recall), and what
    it reaches; the most precise point when none reaches the target."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")
    p = np.asarray(probabilities)[order]
    hits = np.cumsum(np.asarray(right, dtype=np.float64)[order])
    flags = np.arange(1, len(p) + 1, dtype=np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    precision = hits[last_of_tie] / flags[last_of_tie]
    recall = hits[last_of_tie] / max(reposts, 1)
    ok = np.flatnonzero((precision >= target) & (p[last_of_tie] > 0))
    pick = int(ok[np.argmax(recall[ok])]) if ok.size else int(np.argmax(precision))
    point = float(p[last_of_tie][pick])
    outcome = Outcome(float(precision[pick]), float(recall[pick]), int(flags[last_of_tie][pick]), 0.0)
    return point, outcome


@dataclass(frozen=True)
class Calibrated:
    """What the trainer ships: the policy's pieces, and what they reached on the stream."""

    encoder: Calibration
    point: float
    outcome: Outcome
    band: tuple[float, float] | None
    verifier: PairCalibration | None


def calibrate(
    stream: Stream,
    target: float,
    score_pairs: Callable[[list[tuple[int, int]]], np.ndarray] | None = None,
    max_share: float = 0.3,
    floor: float = 0.5,
) -> Calibrated:
    """Calibrate the encoder (and the verifier, given ``score_pairs``), choose the band and the point."""
    pairs = [(i, j, s) for i, found in enumerate(stream.candidates) for j, s in found]
    encoder = isotonic([s for _, _, s in pairs], [int(stream.same(i, j)) for i, j, _ in pairs])
    reposts = stream.reposts()
    plain = Policy(0.0, encoder, 0.5)
    probabilities, right, _ = evaluate(stream, plain, {})
    point, outcome = decision_point(probabilities, right, reposts, target)
    best = Calibrated(encoder, point, outcome, None, None)
    if score_pairs is None:
        return best
    judged = [(i, j, s) for i, j, s in pairs if s >= floor]
    raw = score_pairs([(i, j) for i, j, _ in judged]) if judged else np.zeros(0)
    scores = np.asarray(raw, dtype=np.float64).tolist()
    verified = {(i, j): v for (i, j, _), v in zip(judged, scores, strict=True)}
    verifier = logistic(
        [(s, v) for (_, _, s), v in zip(judged, scores, strict=True)],
        [int(stream.same(i, j)) for i, j, _ in judged],
    )
    grid = [round(x, 2) for x in np.arange(floor, 1.0001, 0.02)]
    for lo in grid:
        for hi in (h for h in grid if h > lo):
            band = (lo, round(hi + 1e-6, 6))  # [lo, hi]: a cosine of exactly 1.0 is verified too
            policy = Policy(0.0, encoder, 0.5, band=band, verifier=verifier, verify_top=TOP)
            probabilities, right, share = evaluate(stream, policy, verified)
            if share > max_share:
                continue
            p, found = decision_point(probabilities, right, reposts, target)
            better = (found.precision >= target, found.recall, found.precision) > (
                best.outcome.precision >= target,
                best.outcome.recall,
                best.outcome.precision,
            )
            if better:
                best = Calibrated(
                    encoder, p, Outcome(found.precision, found.recall, found.flags, share), band, verifier
                )
    return best
