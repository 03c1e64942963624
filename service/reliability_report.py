"""Measure load, fault and fuzz figures on this machine and write `docs/reliability.md`.

    python -m service.reliability_report                      # everything, ~10-20 min on 2 cores
    python -m service.reliability_report --skip-load          # only the fault and fuzz tests
    python -m service.reliability_report --load-seconds 10 --levels 1,8
    python -m service.reliability_report --from-json docs/reliability.json   # redraw, measure nothing

(a) Load: a two-shape library is bootstrapped (full 2,541-pose index) in a temporary data folder,
the API is started with uvicorn on loopback (in-process job threads, no Redis), and
`service.load` runs at each concurrency level, bounded by a request count and a time limit.
(b) Faults and (c) fuzz: the fault and fuzz tests run with pytest (`--junitxml`, and
`--hypothesis-show-statistics` for the generated cases); each scenario is tabulated with its
outcome and duration. The whole document is generated; edit this module, not the document.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
COMMAND = "python -m service.reliability_report"

FAULT_TESTS = [
    ("tests/test_workers_redis.py", "Redis broker, two Celery workers: a worker killed mid-batch, a Redis restart"),
    ("tests/test_api_restart.py", "the API process killed mid-batch and restarted"),
    ("tests/test_workers_sqlite.py", "Celery over the SQLite broker (no Redis)"),
    ("tests/test_index_faults.py", "disk full, unwritable index folder, damaged index files"),
]
FUZZ_TESTS = [
    ("tests/test_api_fuzz.py", "every OpenAPI operation fuzzed (schemathesis)"),
    ("tests/test_uploads.py", "hostile images and form fields (Hypothesis on the decoder)"),
]


# Machine ------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration, ValueError):
        mem = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:
        gpu = "unknown"
    from shape_library.settings import usable_cores

    return {"cores": usable_cores(),
            "cpu": cpu, "memory_gib": round(mem, 1) if mem else None, "gpu": gpu,
            "python": platform.python_version(), "os": platform.platform(terse=True)}


# (a) Load -----------------------------------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _library(folder: Path) -> None:
    import trimesh

    (folder / "misc").mkdir(parents=True, exist_ok=True)
    body = trimesh.creation.box(extents=[0.6, 0.4, 1.6])
    knob = trimesh.creation.box(extents=[0.2, 0.3, 0.2])
    knob.apply_translation([0.0, -0.3, 0.55])
    trimesh.util.concatenate([body, knob]).export(folder / "misc" / "marked_box.ply")
    trimesh.creation.cone(0.5, 1.2).export(folder / "misc" / "cone.ply")


def measure_load(levels: list[int], requests: int, seconds: float, log=print) -> dict:
    import httpx

    from service.load import run

    tmp = Path(tempfile.mkdtemp(prefix="shapesearch-load-"))
    port = _port()
    env = {**os.environ, "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl"),
           "SHAPESEARCH_DATA_DIR": str(tmp / "var"), "SHAPESEARCH_LIBRARY": str(tmp / "lib"),
           "SHAPESEARCH_DEFAULT_LIBRARY": "false", "SHAPESEARCH_RENDER_SIZE": "64",
           "SHAPESEARCH_INDEX_ON_START": "false", "SHAPESEARCH_JOB_EXECUTOR": "thread"}
    env.pop("REDIS_URL", None)
    _library(tmp / "lib")
    out: dict = {"levels": [], "library": "2 shapes x 2,541 poses (render size 64)", "settings": {}}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "shape_library.cli", "bootstrap"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    out["bootstrap_s"] = round(time.perf_counter() - t0, 1)
    log(f"load: library indexed in {out['bootstrap_s']} s")
    server_log = open(tmp / "api.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=REPO, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited: {(tmp / 'api.log').read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the API did not answer /healthz within 180 s")
            time.sleep(0.3)
        from shape_library.settings import Settings

        s = Settings()
        out["settings"] = {"max_inflight_searches": s.max_inflight_searches, "rate_limit_per_minute": s.rate_limit_per_minute,
                           "rate_limit_burst": s.rate_limit_burst}
        run(url, 1, 3, 120, jobs_every=0)  # warm-up: weights and codes loaded once, not counted
        for clients in levels:
            log(f"load: {clients} clients ...")
            r = run(url, clients, requests, seconds, jobs_every=10)
            out["levels"].append(r)
            log(f"load: {clients} clients: {r['throughput_rps']} req/s, status {r['status']}")
            time.sleep(2)  # let the rate limiter's bucket refill between levels
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        out["healthz_after"] = health.get("status")
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        server_log.close()
        tail = (tmp / "api.log").read_text(errors="replace")
        out["server_tracebacks"] = tail.count("Traceback")
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# (b), (c) Tests -----------------------------------------------------------------------------------
_STATS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")


def run_tests(path: str, timeout_s: float, hypothesis_stats: bool = False) -> dict:
    junit = Path(tempfile.mkstemp(prefix="junit-", suffix=".xml")[1])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "junit_family=xunit2", path]
    if hypothesis_stats:
        cmd.append("--hypothesis-show-statistics")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    wall = time.perf_counter() - t0
    cases = []
    try:
        root = ET.parse(junit).getroot()
        for tc in root.iter("testcase"):
            outcome, detail = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = tc.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    detail = (el.get("message") or "").splitlines()[0][:160] if el.get("message") else ""
                    break
            cases.append({"name": tc.get("name"), "time_s": round(float(tc.get("time") or 0), 2), "outcome": outcome, "detail": detail})
    except (ET.ParseError, OSError):
        pass
    finally:
        junit.unlink(missing_ok=True)
    out = {"path": path, "rc": rc, "wall_s": round(wall, 1), "cases": cases, "tail": text[-1500:] if rc not in (0, 5) else ""}
    if hypothesis_stats:
        runs = [tuple(int(v) for v in m.groups()) for m in _STATS.finditer(text)]
        out["generated"] = {"passing": sum(r[0] for r in runs), "failing": sum(r[1] for r in runs),
                            "invalid": sum(r[2] for r in runs), "phases": len(runs)}
    return out


# The document ---------------------------------------------------------------------------------------
def _cell(v) -> str:
    return "–" if v is None else str(v)


def _tests_table(groups: list[dict], titles: dict[str, str]) -> list[str]:
    """One row per scenario; cases of the same name and outcome (schemathesis: one per API operation) as one row."""
    lines = ["| file | scenario (test) | outcome | seconds |", "| --- | --- | --- | --- |"]
    for g in groups:
        if not g["cases"]:
            lines.append(f"| `{g['path']}` | {titles[g['path']]} | no result (exit {g['rc']}) | {g['wall_s']} |")
        rows: dict[tuple, list[dict]] = {}
        for c in g["cases"]:
            rows.setdefault((c["name"], c["outcome"], c["detail"]), []).append(c)
        for (name, outcome, detail), cs in rows.items():
            outcome = outcome + (f": {detail}" if detail and outcome != "passed" else "")
            label = f"`{name}`" + (f" x {len(cs)}" if len(cs) > 1 else "")
            secs = f"{sum(c['time_s'] for c in cs):.2f} in all" if len(cs) > 1 else cs[0]["time_s"]
            lines.append(f"| `{g['path']}` | {label} | {outcome.replace('|', '/')} | {secs} |")
    return lines


def _summary(groups: list[dict]) -> str:
    n = sum(len(g["cases"]) for g in groups)
    by = {k: sum(c["outcome"] == k for g in groups for c in g["cases"]) for k in ("passed", "failed", "error", "skipped")}
    return (f"{n} scenarios: {by['passed']} passed, {by['failed'] + by['error']} failed, {by['skipped']} skipped "
            f"(wall {sum(g['wall_s'] for g in groups):.0f} s)")


def write_doc(results: dict, out: Path = DOC) -> None:
    m = results["machine"]
    L = ["# Reliability: load, faults and fuzz", "",
         f"Generated by `{COMMAND}` on {results['date']} (took {results['took_s']:.0f} s); rerun it to refresh every figure.",
         f"Machine: {m['cores']} CPU cores ({m['cpu']}), {m['memory_gib']} GiB memory, GPU: {m['gpu']}; "
         f"Python {m['python']}, {m['os']}. The machine was shared with other work while measuring, so "
         "timings are pessimistic; the status-code counts do not depend on speed.", ""]

    load = results.get("load")
    L += ["## Load", ""]
    if load is None:
        L += ["Not measured in this run (`--skip-load`).", ""]
    elif "error" in load:
        L += [f"The load measurement failed: `{load['error']}`.", ""]
    else:
        st = load["settings"]
        L += [f"`service.load` against uvicorn on loopback (in-process job threads, no Redis), library of "
              f"{load['library']} (indexed in {load['bootstrap_s']} s). Each level: N concurrent clients, at most "
              f"{results['load_requests']} requests or {results['load_seconds']:.0f} s; `POST /v1/search` (top 3, no refinement), every "
              f"10th request a 3-image `POST /v1/jobs`. Server limits: {st.get('max_inflight_searches')} searches in flight "
              f"(then 503 + Retry-After), {st.get('rate_limit_per_minute'):g} requests/min per client, bursts of "
              f"{st.get('rate_limit_burst')} (then 429 + Retry-After); all clients share one address.", "",
              "| clients | requests | ok | throughput (ok/s) | search p50 ms | search p99 ms | job submit p50 ms | 5xx | 429 | 503 | 429/503 without Retry-After | client errors |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in load["levels"]:
            s = r["status"]
            L.append(f"| {r['clients']} | {r['requests']} | {r['ok']} | {r['throughput_rps']} | {_cell(r['search_p50_ms'])} | "
                     f"{_cell(r['search_p99_ms'])} | {_cell(r['jobs_p50_ms'])} | {r['server_errors_5xx']} | {s.get('429', 0)} | "
                     f"{s.get('503', 0)} | {r['overload_without_retry_after']} | {sum(r['client_errors'].values()) or 0} |")
        total5 = sum(r["server_errors_5xx"] for r in load["levels"])
        over = sum(r["status"].get("429", 0) + r["status"].get("503", 0) for r in load["levels"])
        L += ["", f"Server errors (5xx other than 503) over all levels: **{total5}**; requests turned away with 429/503: {over}, "
              f"all with `Retry-After` unless the column above says otherwise. Tracebacks in the server log: "
              f"{load['server_tracebacks']}; `/healthz` afterwards: `{load.get('healthz_after')}`.",
              "The long variant is the same script with bigger bounds against any server: "
              "`python -m service.load --url http://127.0.0.1:8000 --clients 32 --requests 5000 --seconds 600`; "
              "CI runs the short one (`tests/test_load.py`).", ""]

    titles = dict(FAULT_TESTS + FUZZ_TESTS)
    faults = results.get("faults", [])
    L += ["## Faults", "", "Each scenario is a test run in CI (`make test`); here they ran once more with "
          "`pytest -q --junitxml` (" + _summary(faults) + ").", ""]
    for path, title in FAULT_TESTS:
        L.append(f"- `{path}`: {title}")
    L += ["", *_tests_table(faults, titles), "",
          "What the index fault tests establish: a write is a temporary file in the same folder, fsync'ed and renamed "
          "over the old one, so a disk that fills part-way through (ENOSPC injected mid-write and at the rename) "
          "leaves the old file byte-for-byte intact and no partial or temporary file; an unwritable folder "
          "(chmod 0555 where not root; EROFS and EACCES injected everywhere) fails before any rendering with "
          "`cannot write the view index in <folder>: <cause>`, which through the API is the failed job item's error "
          "(one attempt, no 500), `/healthz` says `degraded`, and search over the shapes already indexed keeps "
          "answering; the API starts with an unwritable index folder and reports it. Every view and code file "
          "carries a SHA-256 of its content, shape id and index key: truncated, bit-flipped, empty, random or "
          "another shape's files are detected, logged, removed and rendered again from the catalog's mesh, "
          "byte-for-byte identical.", ""]

    fuzz = results.get("fuzz", [])
    gen = [g.get("generated") for g in fuzz if g.get("generated")]
    L += ["## Fuzz", "", "Run with `pytest -q --junitxml --hypothesis-show-statistics` (" + _summary(fuzz) + ").", ""]
    for path, title in FUZZ_TESTS:
        L.append(f"- `{path}`: {title}")
    L.append("")
    if gen:
        L.append("| file | generated cases (valid) | failing | rejected by the strategies |")
        L.append("| --- | --- | --- | --- |")
        for g in fuzz:
            if g.get("generated"):
                d = g["generated"]
                L.append(f"| `{g['path']}` | {d['passing']} | {d['failing']} | {d['invalid']} |")
        L.append("")
    failed = sum(c["outcome"] in ("failed", "error") for g in fuzz for c in g["cases"])
    L += [f"Server errors: the API fuzz test fails any case answered with a status of 500 or more other than a "
          f"503 with a detail; failing scenarios in this run: **{failed}**, so the count of 500s is "
          f"**{'0' if failed == 0 else 'not 0: see the table'}**.", "",
          *_tests_table(fuzz, titles), ""]
    for g in faults + fuzz:
        if g["tail"]:
            L += [f"Output of `{g['path']}` (exit {g['rc']}):", "", "```", g["tail"].strip(), "```", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--levels", default="1,4,16,32", help="concurrent clients per load level")
    p.add_argument("--load-requests", type=int, default=150)
    p.add_argument("--load-seconds", type=float, default=25)
    p.add_argument("--test-timeout", type=float, default=900, help="seconds per test file")
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--from-json", type=Path, help="only redraw the document from a previous run's raw figures")
    args = p.parse_args(argv)
    if args.from_json:
        write_doc(json.loads(args.from_json.read_text()), args.out)
        print(f"wrote {args.out}")
        return 0
    t0 = time.perf_counter()
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "load_requests": args.load_requests, "load_seconds": args.load_seconds}
    if not args.skip_load:
        try:
            results["load"] = measure_load([int(v) for v in args.levels.split(",")], args.load_requests, args.load_seconds)
        except Exception as exc:
            results["load"] = {"error": f"{type(exc).__name__}: {exc}"}
    if not args.skip_tests:
        results["faults"] = []
        for path, _ in FAULT_TESTS:
            print(f"faults: {path} ...", flush=True)
            results["faults"].append(run_tests(path, args.test_timeout))
        results["fuzz"] = []
        for path, _ in FUZZ_TESTS:
            print(f"fuzz: {path} ...", flush=True)
            results["fuzz"].append(run_tests(path, args.test_timeout, hypothesis_stats=True))
    results["took_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))  # the raw figures: --from-json redraws
    write_doc(results, args.out)
    print(json.dumps({k: v for k, v in results.items() if k in ("load",)}, indent=1)[:4000])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
