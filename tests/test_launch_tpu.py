"""launch_tpu.sh: syntax, shellcheck (if installed), dry-run commands, and the preemption loop
against a fake `gcloud` on PATH (no cloud is touched)."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch_tpu.sh"


def _run(args, env=None, check=True):
  e = dict(os.environ, **(env or {}))
  for k in ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT", "TPU_ACCELERATOR", "TPU_RUNTIME", "TPU_WORKDIR"):
    if env is None or k not in env:
      e.pop(k, None)
  r = subprocess.run(["bash", str(SCRIPT)] + args, capture_output=True, text=True, env=e, timeout=60)
  if check:
    assert r.returncode == 0, r.stderr
  return r


def test_bash_syntax():
  subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck not on PATH")
  r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
  assert r.returncode == 0, r.stdout


def test_dry_run_v4_32():
  out = _run(["--dry-run", "--name=ms-v4", "--zone=us-central2-b", "--project=proj", "--accelerator=v4-32",
              "--spot", "--workdir=gs://bkt/run1", "--", "python", "-m", "masksearch_jax.train_rl",
              "--model=qwen2_5_1_5b"]).stdout.splitlines()
  assert all(l.startswith("+ ") for l in out), out
  assert out[0] == ("+ gcloud compute tpus tpu-vm describe ms-v4 --zone=us-central2-b --project=proj "
                    "'--format=value(state)'")
  assert out[1] == ("+ gcloud compute tpus tpu-vm create ms-v4 --zone=us-central2-b --project=proj "
                    "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot")
  scp_all = [l for l in out if "tpu-vm scp" in l and "--worker=all" in l]
  assert len(scp_all) == 1 and "masksearch_jax_src.tgz" in scp_all[0]
  ssh = [l for l in out if "tpu-vm ssh ms-v4" in l]
  assert len(ssh) == 2 and all("--worker=all" in l for l in ssh)
  assert "pip install" in ssh[0] and "jax[tpu]" in ssh[0]
  assert ("python -m masksearch_jax.train_rl --model=qwen2_5_1_5b --workdir=gs://bkt/run1" in ssh[1]
          and "MASKSEARCH_DISTRIBUTED=1" in ssh[1] and "worker-$W.log" in ssh[1])
  # v4-32 = 32 TensorCores = 4 hosts: one log fetch per worker.
  fetch = [l for l in out if "masksearch_logs/worker-" in l and "tpu-vm scp" in l]
  assert [l.rsplit("--worker=", 1)[1] for l in fetch] == ["0", "1", "2", "3"]


def test_dry_run_v5e_16_git_install():
  r = _run(["--dry-run", "--name=ms-v5e", "--zone=us-west4-a", "--accelerator=v5e-16", "--preemptible",
            "--install=git", "--repo=https://example.com/ms.git", "--ref=dev", "--",
            "python", "-m", "masksearch_jax.train_sft", "--note=two words"])
  out = r.stdout
  assert "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --preemptible" in out
  assert "git clone --depth=1 --branch=dev https://example.com/ms.git" in out
  assert "tar -czf" not in out
  assert "python -m masksearch_jax.train_sft '\\''--note=two words'\\''" in out  # quoted for the remote shell
  assert out.count("--worker=all") == 2 and "--worker=3" in out and "--worker=4" not in out  # 4 hosts
  assert "--workdir" not in out


@pytest.mark.parametrize("args,msg", [
    (["--dry-run"], "no entry point"),
    (["--dry-run", "--bogus", "--", "x"], "unknown flag '--bogus'"),
    (["--dry-run", "--accelerator=v9-8", "--", "x"], "unknown TPU generation"),
    (["--dry-run", "--install=git", "--", "x"], "needs --repo"),
    (["--dry-run", "--max_restarts=-1", "--", "x"], "max_restarts"),
])
def test_bad_flags(args, msg):
  r = _run(args, check=False)
  assert r.returncode == 2 and msg in r.stderr


def test_help():
  assert "--dry-run" in _run(["--help"]).stdout


_FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Fake gcloud: a slice whose first run is preempted. State in $FAKE_STATE; calls logged to $FAKE_LOG.
echo "$*" >> "$FAKE_LOG"
state=$(cat "$FAKE_STATE" 2>/dev/null || echo NOT_FOUND)
case "$4" in
  describe) [[ "$state" == NOT_FOUND ]] && exit 1; echo "$state" ;;
  create) echo READY > "$FAKE_STATE" ;;
  delete) echo NOT_FOUND > "$FAKE_STATE" ;;
  ssh) if [[ "$*" == *masksearch_logs* ]]; then
         n=$(cat "$FAKE_RUNS" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_RUNS"
         if [[ $n -eq 0 ]]; then echo PREEMPTED > "$FAKE_STATE"; echo "worker lost" >&2; exit 255; fi
         if [[ -n "${FAKE_FAIL_HEALTHY:-}" ]]; then exit 3; fi
         echo "training done"
       fi ;;
  scp) ;;
esac
"""


def _fake_path(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in (("gcloud", _FAKE_GCLOUD), ("tar", "#!/usr/bin/env bash\necho \"$*\" >> \"$FAKE_LOG\"\n")):
    p = bin_dir / name
    p.write_text(body)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "calls.log"),
          "FAKE_STATE": str(tmp_path / "state"), "FAKE_RUNS": str(tmp_path / "runs"), "TPU_POLL_S": "0",
          "TMPDIR": str(tmp_path)}


def test_preemption_recreates_and_reruns(tmp_path):
  env = _fake_path(tmp_path)
  r = _run(["--name=t", "--accelerator=v4-16", "--spot", "--workdir=gs://b/r", f"--log_dir={tmp_path}/logs",
            "--", "python", "-m", "masksearch_jax.train_rl"], env=env, check=False)
  assert r.returncode == 0, r.stderr
  calls = [l.split()[3] if l.startswith("compute") else "tar" for l in Path(env["FAKE_LOG"]).read_text().splitlines()]
  # create, install, run (preempted) -> logs, state PREEMPTED -> delete + create, reinstall, run ok.
  assert calls == ["describe", "create", "tar", "scp", "ssh", "ssh", "scp", "scp", "describe",
                   "describe", "delete", "create", "tar", "scp", "ssh", "ssh", "scp", "scp"]
  assert "restart 1/5" in r.stderr and "training done" in (tmp_path / "logs" / "attempt-1.all.log").read_text()


def test_failure_on_healthy_slice_is_not_retried(tmp_path):
  env = _fake_path(tmp_path)
  Path(env["FAKE_STATE"]).write_text("READY\n")
  Path(env["FAKE_RUNS"]).write_text("1\n")  # skip the simulated preemption
  r = _run(["--name=t", "--accelerator=v4-8", f"--log_dir={tmp_path}/logs", "--", "python", "-m", "x"],
           env=dict(env, FAKE_FAIL_HEALTHY="1"), check=False)
  assert r.returncode == 2 and "failed with status 3 on a healthy slice" in r.stderr
  calls = Path(env["FAKE_LOG"]).read_text()
  assert "create" not in calls and calls.count("masksearch_logs/worker-0.log") == 1


def test_no_install_on_reused_slice(tmp_path):
  env = _fake_path(tmp_path)
  Path(env["FAKE_STATE"]).write_text("READY\n")
  Path(env["FAKE_RUNS"]).write_text("1\n")
  r = _run(["--name=t", "--accelerator=v4-8", "--no_install", f"--log_dir={tmp_path}/logs", "--", "python", "-m", "x"],
           env=env, check=False)
  assert r.returncode == 0, r.stderr
  calls = Path(env["FAKE_LOG"]).read_text()
  assert "pip install" not in calls and "create" not in calls and calls.count("--worker=all") == 1
