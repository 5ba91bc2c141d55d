"""A tiny OpenAI-compatible chat server (stdlib) on 127.0.0.1 for tests: scripted replies."""
from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from typing import Callable


def completion(content: str) -> dict:
  return {"id": "x", "object": "chat.completion",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                       "finish_reason": "stop"}]}


@contextlib.contextmanager
def serve(reply: Callable[[dict, int], tuple[int, object, float]]):
  """reply(request_json, call_number) -> (status, body dict|bytes, delay_s). Yields
  (base_url, requests) where requests collects (path, headers, json) per call."""
  requests: list[tuple[str, dict, dict]] = []
  lock = threading.Lock()

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      with lock:
        requests.append((self.path, dict(self.headers), body))
        n = len(requests) - 1
      status, out, delay = reply(body, n)
      if delay:
        time.sleep(delay)
      data = out if isinstance(out, bytes) else json.dumps(out).encode()
      try:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
      except (BrokenPipeError, ConnectionResetError):
        pass

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  server.daemon_threads = True
  th = threading.Thread(target=server.serve_forever, daemon=True)
  th.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
  finally:
    server.shutdown()
    server.server_close()
    th.join(5)
