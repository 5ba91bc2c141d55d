"""Local retrieval HTTP service speaking Search-R1's retriever protocol.

  python -m masksearch_jax.retrieval.serve --index_dir=/data/wiki_idx --port=8000

POST /retrieve  {"queries": [...], "topk": k, "return_scores": true}
  -> {"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}
  (without return_scores: {"result": [[{"id", "contents"}, ...], ...]}), as Search-R1's
  retrieval_server answers, so its clients work unchanged. GET /health -> {"status": "ok"}.

Binds 127.0.0.1 by default. Bodies over --max_body_bytes get 413, malformed requests 400, a search
slower than --timeout_s 504; the search itself runs on a bounded worker pool so a flood of
requests queues instead of spawning unbounded work.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from absl import app, flags, logging

from masksearch_jax.retrieval.types import Hit, Retriever


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  default_topk: int = 3
  max_topk: int = 100
  max_queries: int = 1024
  max_body_bytes: int = 1 << 20
  timeout_s: float = 30.0
  workers: int = 4
  socket_timeout_s: float = 30.0  # a client that stalls mid-body cannot pin a thread forever


class BadRequest(Exception):

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def parse_request(body: bytes, cfg: ServeConfig) -> tuple[list[str], int, bool]:
  """Validates a /retrieve body; raises BadRequest(400, why)."""
  try:
    req = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BadRequest(400, f"body is not valid JSON: {e}") from None
  if not isinstance(req, dict):
    raise BadRequest(400, "body must be a JSON object")
  queries = req.get("queries")
  if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
    raise BadRequest(400, "'queries' must be a list of strings")
  if len(queries) > cfg.max_queries:
    raise BadRequest(400, f"too many queries: {len(queries)} > {cfg.max_queries}")
  topk = req.get("topk")
  topk = cfg.default_topk if topk is None else topk
  if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= cfg.max_topk:
    raise BadRequest(400, f"'topk' must be an integer in [1, {cfg.max_topk}], got {topk!r}")
  return_scores = req.get("return_scores", False)
  if not isinstance(return_scores, bool):
    raise BadRequest(400, "'return_scores' must be true or false")
  return queries, topk, return_scores


def format_result(hits: list[list[Hit]], return_scores: bool) -> dict[str, Any]:
  def doc(h: Hit) -> dict[str, str]:
    return {"id": h.id, "contents": f'"{h.title}"\n{h.text}'}

  if return_scores:
    return {"result": [[{"document": doc(h), "score": h.score} for h in row] for row in hits]}
  return {"result": [[doc(h) for h in row] for row in hits]}


def make_server(retriever: Retriever, host: str = "127.0.0.1", port: int = 0,
                cfg: ServeConfig = ServeConfig()) -> ThreadingHTTPServer:
  """A ready-to-serve server (port 0 = ephemeral; read `server.server_address`)."""
  pool = cf.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="retrieve")

  class Handler(BaseHTTPRequestHandler):
    timeout = cfg.socket_timeout_s
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, obj: Any) -> None:
      data = json.dumps(obj).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
      self.close_connection = True  # the unread body (if any) must not be parsed as a request
      self._send(status, {"error": message})

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      logging.debug("%s " + format, self.address_string(), *args)

    def do_GET(self):
      if self.path.rstrip("/") == "/health":
        self._send(200, {"status": "ok"})
      else:
        self._error(404, f"unknown path {self.path}; POST /retrieve")

    def do_POST(self):
      if self.path.rstrip("/") != "/retrieve":
        return self._error(404, f"unknown path {self.path}; POST /retrieve")
      length = self.headers.get("Content-Length")
      if length is None or not length.isdigit():
        return self._error(411, "Content-Length header required")
      if int(length) > cfg.max_body_bytes:
        return self._error(413, f"body of {length} bytes exceeds {cfg.max_body_bytes}")
      body = self.rfile.read(int(length))
      try:
        queries, topk, return_scores = parse_request(body, cfg)
      except BadRequest as e:
        return self._error(e.status, str(e))
      future = pool.submit(retriever.search, queries, topk)
      try:
        hits = future.result(timeout=cfg.timeout_s)
      except cf.TimeoutError:
        future.cancel()
        return self._error(504, f"search took longer than {cfg.timeout_s} s")
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("search failed")
        return self._error(500, f"search failed: {type(e).__name__}: {e}")
      self._send(200, format_result(hits, return_scores))

  server = ThreadingHTTPServer((host, port), Handler)
  server.daemon_threads = True
  orig_close = server.server_close

  def server_close():
    orig_close()
    pool.shutdown(wait=False, cancel_futures=True)

  server.server_close = server_close
  return server


FLAGS = flags.FLAGS
if __name__ == "__main__":
  flags.DEFINE_string("index_dir", None, "Directory made by build_index.")
  flags.DEFINE_string("host", "127.0.0.1", "Bind address (0.0.0.0 exposes it to the network).")
  flags.DEFINE_integer("port", 8000, "Port.")
  flags.DEFINE_string("model_dir", None, "Override the encoder model directory.")
  flags.DEFINE_integer("topk", 3, "Default topk when a request omits it.")
  flags.DEFINE_integer("max_topk", 100, "Largest topk accepted.")
  flags.DEFINE_integer("max_queries", 1024, "Most queries in one request.")
  flags.DEFINE_integer("max_body_bytes", 1 << 20, "Largest request body accepted.")
  flags.DEFINE_float("timeout_s", 30.0, "Per-request search timeout (504 after it).")
  flags.DEFINE_integer("workers", 4, "Concurrent searches.")


def main(argv):
  del argv
  if not FLAGS.index_dir:
    raise app.UsageError("--index_dir is required")
  from masksearch_jax.retrieval.retriever import DenseRetriever  # pylint: disable=g-import-not-at-top
  retriever = DenseRetriever.load(FLAGS.index_dir, model_dir=FLAGS.model_dir)
  cfg = ServeConfig(default_topk=FLAGS.topk, max_topk=FLAGS.max_topk,
                    max_queries=FLAGS.max_queries, max_body_bytes=FLAGS.max_body_bytes,
                    timeout_s=FLAGS.timeout_s, workers=FLAGS.workers)
  server = make_server(retriever, FLAGS.host, FLAGS.port, cfg)
  logging.info("serving %s (%d passages) on http://%s:%d/retrieve", FLAGS.index_dir,
               len(retriever.store), *server.server_address[:2])
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  app.run(main)
