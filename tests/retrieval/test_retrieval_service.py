"""HTTP service: Search-R1 request / response shapes, 4xx / 5xx paths, client round trip."""
from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from masksearch_jax.retrieval import client as client_lib
from masksearch_jax.retrieval import serve
from masksearch_jax.retrieval.retriever import StaticRetriever
from masksearch_jax.retrieval.types import Hit, Retriever

HITS = {
    "who directed ed wood": [Hit("0", "Ed Wood (film)", "Ed Wood is a 1994 film.", 0.9),
                             Hit("5", "Tim Burton", "Timothy Walter Burton is ...\nmore", 0.5)],
    "nothing": [],
}


class _Slow:

  def search(self, queries, k):
    time.sleep(1.0)
    return [[] for _ in queries]


class _Broken:

  def search(self, queries, k):
    raise RuntimeError("index exploded")


@pytest.fixture()
def server_for():
  servers = []

  def start(retriever, **cfg):
    srv = serve.make_server(retriever, "127.0.0.1", 0, serve.ServeConfig(**cfg))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    servers.append(srv)
    return srv.server_address[1]

  yield start
  for srv in servers:
    srv.shutdown()
    srv.server_close()


def _post(port, body: bytes, path="/retrieve", headers=None):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
  conn.request("POST", path, body=body, headers=headers or {})
  resp = conn.getresponse()
  data = resp.read()
  conn.close()
  return resp.status, json.loads(data)


def test_search_r1_shapes(server_for):
  port = server_for(StaticRetriever(HITS))
  status, out = _post(port, json.dumps({"queries": ["who directed ed wood", "nothing"],
                                        "topk": 1, "return_scores": True}).encode())
  assert status == 200
  assert out == {"result": [[{"document": {"id": "0",
                                           "contents": "\"Ed Wood (film)\"\nEd Wood is a 1994 film."},
                              "score": 0.9}], []]}
  # Search-R1 default: no scores -> bare documents; topk omitted -> server default (3).
  status, out = _post(port, json.dumps({"queries": ["who directed ed wood"]}).encode())
  assert status == 200 and [d["id"] for d in out["result"][0]] == ["0", "5"]
  assert "score" not in out["result"][0][0]


@pytest.mark.parametrize("body,status,needle", [
    (b"{bad json", 400, "JSON"),
    (b"[1, 2]", 400, "object"),
    (json.dumps({"queries": "one string"}).encode(), 400, "queries"),
    (json.dumps({"queries": ["a", 3]}).encode(), 400, "queries"),
    (json.dumps({"queries": ["a"], "topk": 0}).encode(), 400, "topk"),
    (json.dumps({"queries": ["a"], "topk": 1000}).encode(), 400, "topk"),
    (json.dumps({"queries": ["a"], "topk": "3"}).encode(), 400, "topk"),
    (json.dumps({"queries": ["a"], "return_scores": "yes"}).encode(), 400, "return_scores"),
    (json.dumps({"queries": ["q"] * 9}).encode(), 400, "too many"),
    (json.dumps({"queries": ["x" * 5000]}).encode(), 413, "exceeds"),
])
def test_bad_requests_get_4xx(server_for, body, status, needle):
  port = server_for(StaticRetriever(HITS), max_body_bytes=4096, max_queries=8)
  got, out = _post(port, body)
  assert got == status and needle in out["error"]


def test_unknown_path_timeout_and_failure(server_for):
  port = server_for(StaticRetriever(HITS))
  assert _post(port, b"{}", path="/nope")[0] == 404
  slow = server_for(_Slow(), timeout_s=0.2)
  status, out = _post(slow, json.dumps({"queries": ["a"]}).encode())
  assert status == 504 and "longer than" in out["error"]
  broken = server_for(_Broken())
  status, out = _post(broken, json.dumps({"queries": ["a"]}).encode())
  assert status == 500 and "index exploded" in out["error"]


def test_client_round_trip_and_errors(server_for):
  port = server_for(StaticRetriever(HITS))
  c = client_lib.open_retriever(f"http://127.0.0.1:{port}", timeout_s=5, retries=0)
  assert isinstance(c, Retriever)
  hits = c.search(["who directed ed wood", "nothing"], 2)
  assert hits == [HITS["who directed ed wood"], []]  # title/text split back exactly
  assert c.search([], 3) == []
  with pytest.raises(client_lib.RetrievalError, match="400"):
    c.search(["a"], 0)  # 4xx is not retried
  with pytest.raises(TypeError):
    c.search("a string", 3)


def test_client_retries_then_fails_on_dead_port(server_for):
  port = server_for(StaticRetriever(HITS))
  dead = client_lib.HttpRetriever(f"http://127.0.0.1:{port}/wrong-but-404", retries=0)
  with pytest.raises(client_lib.RetrievalError, match="404"):
    dead.search(["a"], 1)
  import socket  # pylint: disable=g-import-not-at-top
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  free = s.getsockname()[1]
  s.close()  # nothing listens there now
  t0 = time.perf_counter()
  c = client_lib.HttpRetriever(f"http://127.0.0.1:{free}", timeout_s=1, retries=2, backoff_s=0.05)
  with pytest.raises(client_lib.RetrievalError, match="after 3 attempts"):
    c.search(["a"], 1)
  assert time.perf_counter() - t0 < 5
