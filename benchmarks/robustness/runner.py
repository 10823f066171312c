"""Runs the cases (each in its own subprocess, under a timeout and a memory limit), classifies the outcomes and
prints the table."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .cases import all_cases
from .fixtures import build_fixtures
from .model import CATEGORIES, FAST, OUTCOMES, ROOT, Case, Result, _env


PROGRESS_BAR = re.compile(r"^[^\n]*:\s*\d+%\|")


def classify(case: Case, r: Result) -> tuple[str, str]:
    """(outcome, detail)."""
    if r.rc is None:
        return "hang", f"no exit within {case.timeout:.0f} s"
    if case.terminate_after is not None:
        if "Traceback (most recent call last)" in r.stderr:
            return "traceback", f"exit {r.rc} after SIGTERM"
        if r.rc != 143 or "terminated (SIGTERM)" not in r.stderr:
            return "wrong-error", f"exit {r.rc} after SIGTERM (expected 143 and one 'terminated' line)"
        problem = case.on_error(r) if case.on_error is not None else None
        return ("silently-wrong", problem) if problem else ("ok-error", "")
    if "Traceback (most recent call last)" in r.stderr or r.rc not in (0, 2, 130):
        return "traceback", f"exit {r.rc}"
    if r.rc == 130:
        return "wrong-error", "exit 130 (interrupted?)"
    if r.rc == 2:
        # progress bars (tqdm: "desc:  45%|███▌ | 9/20 …") are progress, not messages: the API shows them by default
        lines = [line for line in r.stderr.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
        errors = [line for line in lines if line.startswith("error: ")]
        other = [line for line in lines if not line.startswith(("error: ", "warning: "))]
        if len(errors) != 1 or other:
            return "wrong-error", f"stderr is not one error line ({len(errors)} error lines, {len(other)} other)"
        if case.expect == "success":
            return "wrong-error", "refused a valid input"
        needles = case.needle if isinstance(case.needle, tuple) else (case.needle,) if case.needle else ()
        if needles and not any(n.lower() in errors[0].lower() for n in needles):
            return "wrong-error", f"error line does not name {' / '.join(needles)!r}"
        if case.fast and r.seconds > FAST:
            return "wrong-error", f"the error came after {r.seconds:.1f} s (after the work, not before)"
        if case.on_error is not None:
            problem = case.on_error(r)
            if problem:
                return "silently-wrong", problem
        return "ok-error", ""
    # rc == 0
    if case.expect == "error":
        return "silently-wrong", "accepted (exit 0)"
    if case.check is not None:
        problem = case.check(r)
        if problem:
            return "silently-wrong", problem
    return "ok-success", ""


def run_case(case: Case, work: Path, fx: Path, mem_bytes: int) -> dict:
    d = work / "cases" / case.id
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    record = {"id": case.id, "category": case.category, "description": case.description, "command": case.shown(),
              "expect": case.expect}
    if case.skip:
        return {**record, "outcome": "skipped", "detail": case.skip, "seconds": 0.0, "rc": None, "stderr": ""}
    try:
        if case.setup:
            case.setup(d, fx)
    except Exception as exc:  # noqa: BLE001 - a broken fixture is reported, not fatal
        return {**record, "outcome": "setup-failed", "detail": repr(exc), "seconds": 0.0, "rc": None, "stderr": ""}
    command = ["prlimit", f"--as={mem_bytes}", "--", *case.command(d, fx)] if shutil.which("prlimit") \
        else case.command(d, fx)
    started = time.perf_counter()
    env = {k: v.replace("{d}", str(d)) for k, v in case.env.items()}
    proc = subprocess.Popen(command, cwd=d, env=_env(env, work), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if case.terminate_after is not None:
            try:
                out, err = proc.communicate(timeout=case.terminate_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # as a scheduler stops a job
        out, err = proc.communicate(timeout=case.timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the case's own process group (start_new_session)
        out, err = proc.communicate()
        rc = None
    finally:
        if (d / "full").is_mount():
            subprocess.run(["umount", "-l", str(d / "full")], check=False)
    seconds = time.perf_counter() - started
    result = Result(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), seconds, d, fx)
    try:
        outcome, detail = classify(case, result)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = "silently-wrong", f"verification failed: {exc!r}"
    stderr_lines = [line for line in result.stderr.splitlines() if line.strip()]
    return {**record, "outcome": outcome, "detail": detail, "seconds": round(seconds, 2), "rc": rc,
            "stderr": "\n".join(stderr_lines[-12:] if outcome == "traceback" else stderr_lines[:6])[:3000],
            "stdout": result.stdout[-400:]}


def table(records: list[dict]) -> tuple[str, dict]:
    counts: dict[str, dict[str, int]] = {}
    for cat in CATEGORIES:
        rows = [r for r in records if r["category"] == cat]
        if not rows:
            continue
        entry = {"cases": len(rows), **{o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}}
        entry["skipped"] = sum(r["outcome"] in ("skipped", "setup-failed") for r in rows)
        counts[cat] = entry
    total = {k: sum(c[k] for c in counts.values()) for k in ("cases", *OUTCOMES, "skipped")}
    counts["total"] = total
    header = ["category", "cases", *OUTCOMES, "skipped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for cat, c in counts.items():
        lines.append("| " + " | ".join([f"**{cat}**" if cat == "total" else cat,
                                        *(str(c[k]) for k in header[1:])]) + " |")
    return "\n".join(lines), counts


SCRIPT = ROOT / "benchmarks" / "robustness_sweep.py"  # the entry point (fixtures are built by it)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A sweep of bad and unusual inputs through the flashu command line "
                                     "and the Python API.")
    parser.add_argument("--quick", action="store_true", help="skip the cases marked slow")
    parser.add_argument("--json", type=Path, help="write the counts and every case's outcome here")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--only", action="append", default=[],
                        help="run the cases whose id, category or description contains this (repeatable)")
    parser.add_argument("--work", type=Path, help="work directory (default: a fresh temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--mem-gib", type=float, default=6.0, help="address-space limit per case (GiB)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--build-fixtures", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.build_fixtures:
        build_fixtures(args.build_fixtures)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="flashu-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    fx = work / "fixtures"
    info = json.loads((fx / "info.json").read_text()) if (fx / "info.json").is_file() else {}
    cases = all_cases(info)
    if args.quick:
        cases = [c for c in cases if not c.slow]
    if args.only:
        cases = [c for c in cases if any(s.lower() in f"{c.id} {c.category} {c.description}".lower()
                                         for s in args.only)]
    if args.list:
        for c in cases:
            print(f"{c.id:16} {c.expect:8} {c.shown()[:150]}")
        print(f"{len(cases)} cases")
        return 0

    started = time.perf_counter()
    if not (fx / "info.json").is_file() and any(c.needs_fixtures for c in cases):
        print(f"building fixtures in {fx} …", flush=True)
        subprocess.run([sys.executable, str(SCRIPT), "--build-fixtures", str(fx)], check=True,
                       env=_env(None, work))
        info = json.loads((fx / "info.json").read_text())
        ids = {c.id for c in cases}
        cases = [c for c in all_cases(info) if c.id in ids]
    print(f"running {len(cases)} cases with {args.jobs} at a time (work directory {work})", flush=True)
    mem = int(args.mem_gib * 2**30)
    records: list[dict] = []
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_case, c, work, fx, mem): c for c in cases}
        for future in as_completed(futures):
            record = future.result()
            with lock:
                records.append(record)
                mark = "  " if record["outcome"] in ("ok-error", "ok-success", "skipped") else "!!"
                print(f"{mark} [{len(records):3d}/{len(cases)}] {record['id']:16} {record['outcome']:15} "
                      f"{record['seconds']:6.1f}s  {record['description'][:70]}"
                      + (f"  -- {record['detail']}" if mark == "!!" else ""), flush=True)
    records.sort(key=lambda r: (CATEGORIES.index(r["category"]), r["id"]))
    text, counts = table(records)
    elapsed = time.perf_counter() - started
    rerun = "python benchmarks/robustness_sweep.py" + (" --quick" if args.quick else "") + \
        "".join(f" --only {s!r}" for s in args.only)
    print()
    print(text)
    bad = [r for r in records if r["outcome"] not in ("ok-error", "ok-success", "skipped")]
    if bad:
        print(f"\n{len(bad)} case(s) not ok:")
        for r in bad:
            print(f"\n[{r['id']}] {r['outcome']}: {r['description']} -- {r['detail']}\n  $ {r['command'][:300]}")
            for line in r["stderr"].splitlines()[-6:]:
                print(f"    {line[:240]}")
    print(f"\n{len(records)} cases in {elapsed / 60:.1f} min; rerun: {rerun}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"schema": "flashu-robustness-sweep", "version": 1, "command": rerun,
                                         "seconds": round(elapsed, 1), "counts": counts, "cases": records},
                                        indent=2, allow_nan=False))
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
