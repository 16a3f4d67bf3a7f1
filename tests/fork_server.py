"""Worker side of the crash tests in test_crash_safety.py: ``aevb`` commands in killable processes.

The tests start one server process (:func:`serve`, ``python -c "import fork_server as k;
k.serve()"``) that imports torch and aevb once and then forks a worker per command: each worker is
a separate process, killed with a real SIGKILL, that runs the real command line
(:func:`aevb.cli.main`) without paying Python's and torch's start-up (seconds) again. A worker can
also kill itself at an exact point of a write (``fault``).

Protocol: one JSON object a line on stdin, one answer a line on stdout:
``{"op": "start", "argv": [...], "log": PATH, "fault": [...] or null}`` -> ``{"pid": PID}``;
``{"op": "wait", "pid": PID}`` -> ``{"code": EXIT_CODE}`` (``-9`` for a SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import sklearn.datasets  # noqa: F401  (the embedded digits data: imported once, in the server)
import torch

import aevb.cli
from aevb import runs


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(fault: tuple) -> None:
    """Arrange for this process to SIGKILL itself at the n-th occurrence of a write event.

    - ``("failpoint", tag, n)``: at the n-th ``runs._failpoint`` whose name starts with ``tag``
      (the phases of a commit: "pending-written", "committed", "renamed:NAME");
    - ``("partial-write", n)``: halfway through writing the n-th file a commit writes (a torn
      pending file, or a torn manifest);
    - ``("partial-metrics", n)``: halfway through the n-th line appended to metrics.jsonl.
    """
    kind, *rest = fault
    count = {"n": 0}

    def hit(n: int) -> bool:
        count["n"] += 1
        return count["n"] == n

    if kind == "failpoint":
        tag, n = rest

        def failpoint(where: str) -> None:
            if where.startswith(tag) and hit(n):
                _die()

        runs._failpoint = failpoint
    elif kind == "partial-write":
        (n,) = rest
        real = runs.atomic_write_bytes

        def torn(path, data: bytes, **kw) -> None:
            if hit(n):
                path = os.fspath(path)
                d, name = os.path.split(path)
                with open(os.path.join(d, f".{name}.torn00.tmp"), "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                _die()
            real(path, data, **kw)

        runs.atomic_write_bytes = torn
    elif kind == "partial-metrics":
        (n,) = rest
        real_append = runs.append_metrics

        def torn_append(run_dir, record) -> None:
            if hit(n):
                line = json.dumps(record, sort_keys=True) + "\n"
                with open(os.path.join(os.fspath(run_dir), runs.METRICS), "a") as f:
                    f.write(line[: len(line) // 2])
                    f.flush()
                _die()
            real_append(run_dir, record)

        runs.append_metrics = torn_append
    else:
        raise ValueError(f"unknown fault {fault!r}")


def run_cli(argv: list[str], log: str, fault: tuple | None = None) -> None:
    """Process target: ``aevb ARGV`` with stdout and stderr to ``log``; exits with its code."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    torch.set_num_threads(1)
    if fault is not None:
        _install(fault)
    try:
        code = aevb.cli.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """The fork server: start and reap workers on request (see the module's docstring)."""
    torch.set_num_threads(1)
    # what a training run imports lazily (torch's optimizers pull in torch._dynamo: seconds)
    torch.optim.Adagrad([torch.zeros(1, requires_grad=True)])
    sklearn.datasets.load_digits()
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            pid = os.fork()
            if pid == 0:
                run_cli(req["argv"], req["log"], tuple(req["fault"]) if req["fault"] else None)
            answer = {"pid": pid}
        elif req["op"] == "wait":
            _, status = os.waitpid(req["pid"], 0)
            answer = {"code": os.waitstatus_to_exitcode(status)}
        else:
            answer = {"error": f"unknown op {req['op']!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
