"""Shared benchmark helpers: timing, FLOP counts, hardware peaks, table printing."""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import statistics
import zlib
import re
import tempfile
import time
from typing import Callable

import jax

from masksearch_jax.model.config import Qwen2Config
from masksearch_jax.protocol import DEFAULT, Hit, Protocol
from masksearch_jax.train import flops

# H100 SXM datasheet dense bf16 peak (MFU is reported against this, as MaxText does) and the
# copy bandwidth measured on the lent H100 (decode roofline).
PEAK_FLOPS = {"gpu": 989e12, "tpu": 197e12, "cpu": 1e12}
HBM_BYTES_PER_S = {"gpu": 3.02e12}


def train_flops_per_step(cfg: Qwen2Config, batch: int, seq: int) -> float:
  """Model FLOPs of one training step: the trainer's own count (train/flops.py), times tokens."""
  return flops.train_flops_per_token(cfg, seq) * batch * seq


def time_fn(fn: Callable[[], object], warmup: int = 2, iters: int = 10) -> list[float]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  out = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def measure_bandwidth(n_elems: int = 512 * 1024 * 1024, iters: int = 20) -> float:
  """Device copy bandwidth (TB/s, bytes read + written): `iters` elementwise passes over a 1 GiB
  bf16 buffer inside one jitted loop, so one dispatch and one sync cover ~40 GiB of traffic
  (timing a single 1 GiB pass read 2.1 TB/s on an H200 whose copies run at ~4.3 TB/s)."""
  import jax
  import jax.numpy as jnp
  x = jnp.ones((n_elems,), jnp.bfloat16)
  f = jax.jit(lambda a: jax.lax.fori_loop(0, iters, lambda i, a: a + jnp.bfloat16(1), a))
  f(x).block_until_ready()                                   # compile
  t = min(time_fn(lambda: f(x).block_until_ready(), warmup=0, iters=3))
  return iters * 2 * x.size * x.dtype.itemsize / t / 1e12


_COPY_SCRIPT = """
import sys, torch
if not torch.cuda.is_available():
  sys.exit(3)
n, iters = int(sys.argv[1]), int(sys.argv[2])
a = torch.empty(n // 2, dtype=torch.bfloat16, device="cuda")
b = torch.empty_like(a)
b.copy_(a)
best = float("inf")
for _ in range(3):
  s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
  s.record()
  for _ in range(iters):
    b.copy_(a)
  e.record()
  torch.cuda.synchronize()
  best = min(best, s.elapsed_time(e) / 1e3)
print(iters * 2 * n / best / 1e12)
"""


def measure_copy_torch(n_bytes: int = 1 << 30, iters: int = 20) -> float | None:
  """Device-to-device copy bandwidth (TB/s, read + write) with torch and CUDA events: what a
  plain copy kernel moves, the ceiling a weight-streaming decode step is compared with (on an
  H200 XLA's elementwise loop read 3.08 TB/s where copies run at ~4.3). None without torch/CUDA.

  Runs in a child process: with torch's CUDA context in the same process the JAX decode that
  followed ran 12% slower (1.5B batch 1 on an H200: 553 vs 628 tok/s, benchmarks/RESULTS.md)."""
  import subprocess
  import sys
  try:
    out = subprocess.run([sys.executable, "-c", _COPY_SCRIPT, str(n_bytes), str(iters)],
                         capture_output=True, text=True, timeout=300)
  except (OSError, subprocess.TimeoutExpired):
    return None
  if out.returncode != 0:
    return None
  try:
    return float(out.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    return None


def roofline_bandwidth(platform: str) -> dict[str, float]:
  """Measured copy bandwidths (TB/s) and the one a roofline should use, under "roofline_tbs":
  a device copy timed by torch where it has CUDA (the honest ceiling), else XLA's elementwise
  loop (a small buffer on CPU: a smoke test)."""
  out = {"measured_copy_tbs": measure_bandwidth(
      32 * 1024 * 1024 if platform == "cpu" else 512 * 1024 * 1024)}
  torch_copy = measure_copy_torch() if platform == "gpu" else None
  if torch_copy:
    out["torch_copy_tbs"] = torch_copy
  out["roofline_tbs"] = torch_copy or out["measured_copy_tbs"]
  return out


def median(xs):
  return statistics.median(xs)


def print_table(rows: list[dict], cols: list[str]) -> None:
  widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
  print(" | ".join(c.ljust(widths[c]) for c in cols))
  print("-|-".join("-" * widths[c] for c in cols))
  for r in rows:
    print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def write_json(path: str | None, payload) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(payload, f, indent=2, default=str)


def classify(name: str) -> str:
  n = name.lower()
  if any(k in n for k in ("gemm", "cutlass", "matmul", "xmma", "sm90_", "nvjet", "cublas")):
    return "gemm"
  if any(k in n for k in ("fmha", "flash", "cudnn", "attention", "sdpa")):
    return "attention"
  if "memcpy" in n or "memset" in n or "copy" in n:
    return "copy"
  if "reduce" in n:
    return "reduction"
  if "fusion" in n or "loop" in n or "input" in n:
    return "fusion"
  return "other"


_OP_ARGS = ("hlo_op", "tf_op")      # device-event args (jax 0.11 traces) that name the HLO op


def kernel_times(fn, steps: int):
  """Profiles `steps` calls of fn (each blocked on) and returns (ms per call by kernel name,
  ms per call by class, kernel launches per call, {kernel name: Counter(HLO op -> ms per call)})
  from the device streams of a Perfetto trace. The HLO op (when the trace's event args carry
  one) is what names a vendor kernel's caller: which `copy` a `memcpy32_post` is, which dot a
  cuBLAS gemm is."""
  d = tempfile.mkdtemp()
  jax.profiler.start_trace(d, create_perfetto_trace=True)
  for _ in range(steps):
    jax.block_until_ready(fn())
  jax.profiler.stop_trace()
  path = glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  # Device streams: keep complete events on GPU stream threads (pid names contain /device:GPU).
  pid_names = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu_pids = {p for p, n in pid_names.items() if "gpu" in n.lower() and "host" not in n.lower()}
  per_kernel, per_class, launches = collections.Counter(), collections.Counter(), 0
  kernel_ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in gpu_pids:
      dur = e.get("dur", 0) / 1e3 / steps                   # ms per call
      per_kernel[e["name"]] += dur
      per_class[classify(e["name"])] += dur
      launches += 1
      args = e.get("args") or {}
      op = next((str(args[k]) for k in _OP_ARGS if args.get(k)), None)
      if op:
        kernel_ops[e["name"]][op] += dur
  if not per_class:
    print("no device kernel events; processes in trace:", sorted(set(pid_names.values()))[:20])
  return per_kernel, per_class, launches / steps, dict(kernel_ops)


RESERVED_IDS = 16          # ids < 16: pad (0), the 8 protocol tags (1..8), eos (9); never free
PAD_ID, EOS_ID = 0, 9
ANSWER_IDS = (400, 401)    # row j of a group answers ANSWER_IDS[j % 2]; the gold is the first


class SyntheticTokenizer:
  """Word-level stand-in for benchmarks (no tokenizer files on the bench machine): tags are ids
  1..8, other words hash into [16, V); id i >= 16 decodes to ' w<i>'. Has the few HF attributes
  the sampler and RL paths read."""
  pad_token_id, eos_token_id, eos_token, pad_token = PAD_ID, EOS_ID, None, None

  def __init__(self, vocab: int, protocol: Protocol = DEFAULT):
    self.vocab, self.tags = vocab, list(protocol.all_tags)
    self.tag_id = {t: i + 1 for i, t in enumerate(self.tags)}
    self._split = re.compile("(" + "|".join(re.escape(t) for t in self.tags) + ")")

  def encode(self, text, add_special_tokens=False):
    out = []
    for part in self._split.split(text):
      if part in self.tag_id:
        out.append(self.tag_id[part])
      else:
        out += [RESERVED_IDS + zlib.crc32(w.encode()) % (self.vocab - RESERVED_IDS)
                for w in part.split()]
    return out

  def decode(self, ids, **kw):
    return "".join(self.tags[i - 1] if 1 <= i <= len(self.tags) else
                   "" if i < RESERVED_IDS else f" w{i}" for i in ids)

  def convert_tokens_to_ids(self, token):
    return self.tag_id.get(token)                 # no <|im_end|>: stop_ids falls back to eos


class StubRetriever:
  """k hits of `words` words each after a fixed sleep (the observation is always cut to the
  per-turn token budget when words x k exceeds it)."""

  def __init__(self, latency_s: float, words: int = 200):
    self.latency_s, self.words, self.calls = latency_s, words, 0

  def search(self, queries, k):
    time.sleep(self.latency_s)
    self.calls += 1
    text = " ".join(f"passage{j}" for j in range(self.words))
    return [[Hit(str(j), f"title {j}", text, 1.0) for j in range(k)] for _ in queries]


_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=[^\n]*?metadata=\{([^}\n]*)\}", re.M)


def _kernel_key(name: str) -> str:
  """XLA:GPU names a fusion's kernel after its HLO instruction with '.' and '-' made '_'."""
  return re.sub(r"[.\-]", "_", name)


def _hlo_table(hlo_text: str, title: str) -> dict[int, str]:
  """One of the module's location tables ("FileNames", "StackFrames", ...): {id: rest of line}."""
  m = re.search(rf"^{title}\n((?:\d+ [^\n]*\n)*)", hlo_text, re.M)
  return {int(i): rest for i, rest in re.findall(r"^(\d+) ([^\n]*)$", m.group(1), re.M)} if m else {}


def hlo_sources(hlo_text: str) -> dict[str, str]:
  """{kernel name: "file.py:line op"} for every HLO instruction with source metadata, from a
  compiled executable's `as_text()`: tells which model line a profiled fusion came from (a
  fusion carries its root's metadata). Reads both metadata styles: `source_file`/`source_line`
  and the newer `stack_frame_id` into the module's FileNames / FileLocations / StackFrames
  tables (the frame's own location: the innermost user-code line). Library kernels (cuBLAS,
  cuDNN) have vendor names and do not map."""
  files = {i: r.strip('"') for i, r in _hlo_table(hlo_text, "FileNames").items()}
  locs = {i: (int(re.search(r"file_name_id=(\d+)", r).group(1)),
              int(re.search(r"\bline=(\d+)", r).group(1)))
          for i, r in _hlo_table(hlo_text, "FileLocations").items()}
  frames = {i: int(re.search(r"file_location_id=(\d+)", r).group(1))
            for i, r in _hlo_table(hlo_text, "StackFrames").items()}
  out = {}
  for name, meta in _HLO_INSTR.findall(hlo_text):
    f = re.search(r'source_file="([^"]*)"', meta)
    line = re.search(r"source_line=(\d+)", meta)
    frame = re.search(r"stack_frame_id=(\d+)", meta)
    where = None
    if f and line:
      where = f"{os.path.basename(f.group(1))}:{line.group(1)}"
    elif frame and frames.get(int(frame.group(1))) in locs:
      file_id, lineno = locs[frames[int(frame.group(1))]]
      where = f"{os.path.basename(files.get(file_id, '?'))}:{lineno}"
    if where:
      op = re.search(r'op_name="([^"]*)"', meta)
      out[_kernel_key(name)] = where + (f" {op.group(1).rsplit('/', 1)[-1]}" if op else "")
  return out


def print_kernels(per_class, per_kernel, top: int, scale: float = 1.0, unit: str = "ms",
                  sources: dict[str, str] | None = None,
                  kernel_ops: dict[str, collections.Counter] | None = None) -> None:
  """The kernel_times breakdown: classes with their share, then the `top` kernels; times x scale.
  `sources` (hlo_sources) adds the model line each XLA fusion comes from; `kernel_ops`
  (kernel_times) names the HLO ops behind a vendor kernel, with their lines."""
  sources, kernel_ops = sources or {}, kernel_ops or {}
  total = max(sum(per_class.values()), 1e-9)
  for k, v in per_class.most_common():
    print(f"  {k:10s} {v * scale:8.1f} {unit}  {100 * v / total:5.1f}%")
  for k, v in per_kernel.most_common(top):
    where = sources.get(_kernel_key(k), "")
    print(f"  {v * scale:8.2f} {unit}  {k[:80]}" + (f"  <- {where}" if where else ""))
    if not where:
      for op, t in kernel_ops.get(k, collections.Counter()).most_common(3):
        src = sources.get(_kernel_key(op), "")
        print(f"      {t * scale:8.2f} {unit}  op {op[:60]}" + (f"  <- {src}" if src else ""))


def first_difference(out, ref) -> dict:
  """Where rollout `out` leaves `ref`: the earliest differing token (offset after the prompt, -1
  if none) and the largest log-prob difference of the generated tokens before it (numeric drift
  before a flip, vs a different path from the start)."""
  import numpy as np
  diff = out.tokens != ref.tokens
  first = np.where(diff.any(1), diff.argmax(1), out.tokens.shape[1])            # [B]
  before = np.arange(out.tokens.shape[1])[None, :] < first[:, None]
  gen = before & (out.loss_mask == 1) & (ref.loss_mask == 1)
  lp = float(np.max(np.abs(out.logprobs - ref.logprobs), where=gen, initial=0.0))
  offs = (first - out.prompt_lengths)[diff.any(1)]
  return {"first_diff_offset": int(offs.min()) if offs.size else -1,
          "max_logprob_diff_before": lp}
