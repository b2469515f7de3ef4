"""The public APIs against real things: ``python -m worker serve`` as a process spoken to over HTTP with
httpx, and ``twinflag.Detector`` on a real embedded index, both with a tiny real model."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devkit.broker import free_port
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
KEY_A, KEY_B = "key-of-tenant-a-0123456789", "key-of-tenant-b-0123456789"
WORDS = [
    "free",
    "iphone",
    "click",
    "here",
    "win",
    "prize",
    "cheap",
    "pills",
    "weather",
    "today",
    "rain",
    "sunny",
    "match",
    "goal",
    "team",
    "city",
    "news",
    "story",
    "forum",
    "post",
    "repost",
    "river",
    "bridge",
    "market",
    "bread",
    "coffee",
    "school",
    "garden",
    "music",
    "film",
]


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT whose vocabulary is ``WORDS`` (seconds to build)."""
    pytest.importorskip("transformers")
    from devkit.tiny import tiny_model

    rng = random.Random(0)
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny", [sentence(rng) for _ in range(400)])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, key: str | None) -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m worker serve`` on a free port, with keys for tenants a and b."""
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINFLAG_")}
    env.update(
        TWINFLAG_HTTP__KEYS=json.dumps({"tenant-a": KEY_A, "tenant-b": KEY_B}),
        TWINFLAG_HTTP__PORT=str(port),
        TWINFLAG_HTTP__MAX_BODY_BYTES="4096",
        TWINFLAG_HTTP__MAX_TEXT_CHARS="1000",
        TWINFLAG_LOG_FORMAT="json",
    )
    log = tmp / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "serve", "--model", str(model), "--index", str(tmp / "index")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield Server(url, process, log)
    process.terminate()
    assert process.wait(timeout=20) == 0, log.read_text()


def check(client: httpx.Client, text: str, **extra: str) -> httpx.Response:
    return client.post("/v1/check", json={"text": text, **extra})


def add(client: httpx.Client, doc_id: str, text: str, **extra: str) -> httpx.Response:
    return client.post("/v1/documents", json={"id": doc_id, "text": text, **extra})


# ------------------------------------------------------------------------------------------- HTTP


def test_check_is_read_only_and_an_added_post_is_found(server: Server) -> None:
    text = "garden music film river bridge market coffee bread"
    with server.client(KEY_A) as a:
        for _ in range(2):  # checked twice: the first check stored nothing for the second to find
            first = check(a, text)
            assert first.status_code == 200, first.text
            assert first.json()["flagged"] is False
            assert first.json()["added"] is False
        added = add(a, "post-1", text)
        assert added.status_code == 200, added.text
        assert added.json() | {"model": ""} == {
            "id": "post-1",
            "tenant": "tenant-a",
            "flagged": False,  # nothing earlier: the checks were not stored
            "duplicate_of": None,
            "score": None,
            "probability": None,
            "matches": [],
            "stage": None,
            "decided_by": None,
            "verifier_score": None,
            "model": "",
            "added": True,
        }
        found = check(a, "Garden  music film river bridge market coffee bread").json()
        assert (found["flagged"], found["duplicate_of"], found["stage"]) == (True, "post-1", "exact")
        assert found["matches"] == [{"id": "post-1", "score": 1.0}]
        again = add(a, "post-2", text).json()  # check and add: a repost is flagged as it is stored
        assert (again["flagged"], again["duplicate_of"], again["added"]) == (True, "post-1", True)
        same = check(a, text, id="post-1").json()  # post-1 unchanged: its stored first decision
        assert (same["id"], same["flagged"]) == ("post-1", False)
        assert check(a, text).json()["duplicate_of"] == "post-1"  # the earliest of the two


def test_a_key_sees_and_deletes_only_its_own_tenant(server: Server) -> None:
    text = "school garden coffee river city news story forum"
    with server.client(KEY_A) as a, server.client(KEY_B) as b:
        assert add(a, "shared-id", text).status_code == 200
        assert check(b, text).json()["flagged"] is False  # tenant b's index holds nothing of a's
        for response in (
            check(b, text, tenant="tenant-a"),
            add(b, "x", text, tenant="tenant-a"),
            b.delete("/v1/documents/tenant-a/shared-id"),
        ):
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "forbidden"
        missing = b.delete("/v1/documents/tenant-b/shared-id")  # same id, b's tenant: nothing there
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert check(a, text).json()["duplicate_of"] == "shared-id"  # a's post survived

        deleted = a.delete("/v1/documents/tenant-a/shared-id")
        assert deleted.status_code == 200
        assert deleted.json() == {"tenant": "tenant-a", "id": "shared-id", "deleted": True}
        assert check(a, text).json()["flagged"] is False
    for key in (None, "not-a-key", KEY_A + "x"):
        with server.client(key) as stranger:
            refused = check(stranger, text)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
    assert KEY_A not in server.log.read_text()  # and no text is logged either
    assert text not in server.log.read_text()


def test_a_verdict_over_http_makes_a_missed_pair_a_flag_from_then_on(server: Server) -> None:
    first, other = "free iphone click here win prize", "weather today rain sunny"
    with server.client(KEY_A) as a, server.client(KEY_B) as b:
        assert add(a, "v-x1", first).json()["flagged"] is False
        assert add(a, "v-y1", other).json()["flagged"] is False  # a pair the model misses
        verdict = {"id": "v-y1", "duplicate_of": "v-x1", "verdict": "duplicate", "reviewer": "mod-1"}
        assert b.post("/v1/verdicts", json=verdict | {"tenant": "tenant-a"}).status_code == 403
        wrong = a.post("/v1/verdicts", json=verdict | {"verdict": "maybe"})
        assert wrong.status_code == 422
        given = a.post("/v1/verdicts", json=verdict)
        assert given.status_code == 200, given.text
        assert given.json()["remembered"] is True
        assert a.delete("/v1/documents/tenant-a/v-y1").status_code == 200
        again = add(a, "v-y2", other).json()  # the same two texts meet again: flagged, by the verdict
        assert (again["flagged"], again["duplicate_of"], again["decided_by"]) == (True, "v-x1", "moderator")


def test_oversized_and_malformed_requests_get_json_errors(server: Server) -> None:
    with server.client(KEY_A) as a:
        cases = [
            (a.post("/v1/check", json={"text": "x" * 5000}), 413, "too_large"),
            (  # no Content-Length: counted as it arrives
                a.post("/v1/check", content=iter([b'{"text": "', b"y" * 5000, b'"}'])),
                413,
                "too_large",
            ),
            (check(a, "z " * 600), 422, "text_too_long"),
            (a.post("/v1/check", content=b'{"text": ', headers=JSON), 400, "invalid_json"),
            (a.post("/v1/check", json={"txt": "hello"}), 422, "invalid_request"),
            (a.post("/v1/check", json={"text": 5}), 422, "invalid_request"),
            (add(a, "", "hello"), 422, "invalid_request"),
            (add(a, "i" * 300, "hello"), 422, "id_too_long"),
            (check(a, "\u200b \u200b"), 422, "empty_text"),  # empty once normalised: the worker's rule
            (a.get("/v1/nowhere"), 404, "not_found"),
            (a.put("/v1/check"), 405, "method_not_allowed"),
        ]
        for response, status, code in cases:
            assert response.status_code == status, (code, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]["code"] == code, response.text


def test_the_openapi_description_lists_the_endpoints(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/check", "/v1/documents", "/v1/documents/{tenant}/{doc_id}"} <= set(spec["paths"])
    assert "delete" in spec["paths"]["/v1/documents/{tenant}/{doc_id}"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_concurrent_checks_while_posts_stream_in_lose_nothing(server: Server) -> None:
    """64 clients check while 150 posts are added one by one: every request is answered, every post is
    stored, and afterwards each is found by a check."""
    rng = random.Random(7)
    posts = [(f"s-{i}", f"stream {i} " + sentence(rng)) for i in range(150)]
    probes = [sentence(rng) for _ in range(400)]
    with server.client(KEY_B) as b, ThreadPoolExecutor(64) as pool:
        adding = pool.submit(lambda: [add(b, doc_id, text).status_code for doc_id, text in posts])
        checked = list(pool.map(lambda text: check(b, text).status_code, probes))
        assert adding.result() == [200] * len(posts)
        assert checked == [200] * len(probes)
        found = list(pool.map(lambda post: check(b, post[1]).json()["duplicate_of"], posts))
    assert found == [doc_id for doc_id, _ in posts]
    batches = [json.loads(line) for line in server.log.read_text().splitlines() if '"http.batch"' in line]
    assert max(b["requests"] for b in batches if b["kind"] == "check") > 1  # checks were batched


# ---------------------------------------------------------------------------------------- library


def test_the_library_on_a_real_embedded_index(model: Path, tmp_path: Path) -> None:
    from twinflag import Detector, InvalidDocumentError

    index = tmp_path / "index"
    text = "river bridge market bread coffee school garden music"
    with Detector.open(model, index) as detector:
        assert detector.check(text, tenant="t").flagged is False
        assert detector.count() == 0  # read-only
        first = detector.add("a", text, tenant="t")
        assert (first.id, first.flagged) == ("a", False)
        replay = detector.add("a", text, tenant="t")  # the same post again: its first decision
        assert replay.model_dump(exclude={"source"}) == first.model_dump(exclude={"source"})
        repost = detector.check("RIVER bridge market bread coffee school garden music", tenant="t")
        assert (repost.flagged, repost.duplicate_of, repost.decided_by) == (True, "a", "exact")
        assert detector.check(text, tenant="other").flagged is False
        with pytest.raises(InvalidDocumentError) as refused:
            detector.check("   ")
        assert refused.value.code == "empty_text"
        results = list(
            detector.scan(
                [{"id": "b", "text": text, "tenant": "t"}, {"id": "c", "text": ""}, {"id": "d", "text": "x"}]
            )
        )
        assert [getattr(r, "duplicate_of", None) for r in results] == ["a", None, None]
        assert isinstance(results[1], InvalidDocumentError)
        assert detector.count() == 3
        assert detector.delete("a", tenant="t") is True
        assert detector.delete("a", tenant="t") is False
    with Detector.open(model, index) as reopened:  # durable
        assert reopened.count() == 2
        assert reopened.check(text, tenant="t").duplicate_of == "b"
        checked = list(reopened.scan([{"id": "e", "text": text, "tenant": "t"}] * 3, read_only=True))
        assert [getattr(r, "duplicate_of", None) for r in checked] == ["b"] * 3  # never each other
        assert reopened.count() == 2


def test_scan_read_only_writes_nothing_to_the_index(model: Path, tmp_path: Path) -> None:
    from twinflag import Detector

    index = tmp_path / "index"
    with Detector.open(model, index) as detector:
        detector.add("orig", "coffee bread market river", tenant="default")
    lines = tmp_path / "in.jsonl"
    lines.write_text(
        "\n".join(
            json.dumps(d)
            for d in (
                {"id": "p1", "text": "coffee bread market river"},
                {"id": "p2", "text": "coffee bread market river"},
                {"id": "orig", "deleted": True},
            )
        )
        + "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINFLAG_")}
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "worker", "scan", "--model", str(model), "--input", str(lines)]
    command += ["--output", str(out), "--index", str(index), "--read-only", "--quiet"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("duplicate_of") for r in rows[:2]] == ["orig", "orig"]  # against the index, not each other
    with Detector.open(model, index) as detector:
        assert detector.count() == 1  # neither added nor deleted


def test_verdicts_given_to_the_library_survive_a_reopen_and_a_deleted_post(
    model: Path, tmp_path: Path
) -> None:
    from twinflag import Detector, InvalidVerdictError

    index = tmp_path / "index"
    original = "river bridge market bread coffee school garden music"
    near_miss = "river bridge market bread coffee school garden film"
    with Detector.open(model, index, threshold=0.5) as detector:
        detector.add("a1", original)
        assert detector.add("b1", near_miss).duplicate_of == "a1"
        detector.review("b1", "a1", "not_duplicate")  # a moderator rejects the flag
        with pytest.raises(InvalidVerdictError, match="verdict"):
            detector.review_many([{"id": "b1", "duplicate_of": "a1", "verdict": "maybe"}])
        detector.delete("b1")
    with Detector.open(model, index, threshold=0.5) as detector:  # the pair is known by its texts
        again = detector.add("b2", near_miss)
    assert not again.flagged
    assert len((index / "verdicts.jsonl").read_text().splitlines()) == 1  # the bad one was not kept
