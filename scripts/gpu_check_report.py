"""The compact end of scripts/gpu_check.sh's output (the device tool returns
only the last 12,000 characters): the versions of what the checks import,
test counts and failures from JUnit files, and the benchmark rows of the GPU
probe, merged into one JSON.

    python3 scripts/gpu_check_report.py imports
    python3 scripts/gpu_check_report.py outcomes OUT/tests.log [...]
    python3 scripts/gpu_check_report.py junit OUT/tests.xml [...]
    python3 scripts/gpu_check_report.py probe OUT/probe.json OUT/json/*.json

`imports` prints one line of versions (and the GPU), a MISSING line for each
package that does not import, and fails only when torch does not.
`outcomes` reads the per-test lines of a `pytest -v` log (with or without
xdist), so a run cut short by its timeout, which writes no JUnit report and
no pytest summary, still counts what ended and names every test that failed,
errored or crashed its worker, grouped by file, with the most common messages
where pytest got to print them.
`probe` writes the runs it reads into one file ({"runs": {stem: payload}}),
then prints one line per row: time, xfloor (op level), speedup, peak extra
memory, the profiled kernel count, the check; and what became of torch's own
global_unstructured on the LLaMA-7B-shaped list.
"""
import collections
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAX_FAILURES = 25
PACKAGES = {"torch": "torch", "triton": "triton", "pytest": "pytest", "hypothesis": "hypothesis",
            "numpy": "numpy", "xdist": "pytest-xdist", "pytest_timeout": "pytest-timeout"}  # module: distribution


def imports():
    import importlib
    import importlib.metadata

    found, missing = [], []
    for name, dist in PACKAGES.items():
        try:
            importlib.import_module(name)
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except Exception as e:  # ImportError, or a package broken against this torch
            missing.append(name)
            print(f"{name}: MISSING ({type(e).__name__}: {e})")
    if "torch" in missing:
        return 1
    import torch

    gpu = "no CUDA device visible"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
    tail = f"; MISSING: {', '.join(missing)}" if missing else ""
    print(f"imports: {', '.join(found)}; Python {sys.version.split()[0]}; CUDA {torch.version.cuda}; {gpu}{tail}")
    return 0


def junit(paths):
    status = 0
    for path in paths:
        name = os.path.basename(path)
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            print(f"{name}: no JUnit report ({type(e).__name__}: {e})")
            status = 1
            continue
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
        for suite in suites:
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        print(f"{name}: {counts['tests']} tests: {passed} passed, {counts['failures']} failed, "
              f"{counts['errors']} errors, {counts['skipped']} skipped")
        bad = []
        for case in root.iter("testcase"):
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    where = f"{case.get('classname', '')}::{case.get('name', '')}"
                    message = (el.get("message") or el.text or "").strip().splitlines()
                    bad.append(f"  {tag.upper()} {where}: {message[0][:160] if message else ''}")
        for line in bad[:MAX_FAILURES]:
            print(line)
        if len(bad) > MAX_FAILURES:
            print(f"  ... and {len(bad) - MAX_FAILURES} more (see {name})")
        status |= bool(bad)
    return status


OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
# "[gw3] [ 12%] FAILED tests/a.py::test_x" (xdist), "tests/a.py::test_x FAILED  [ 12%]" (one process),
# "FAILED tests/a.py::test_x - AssertionError: ..." (the -rfE summary, when pytest got to it)
WORD = "(" + "|".join(OUTCOMES) + ")"
XDIST_LINE = re.compile(r"^\[gw\d+\] \[\s*\d+%\] " + WORD + r" (\S+)")
PLAIN_LINE = re.compile(r"^(\S+::\S+) " + WORD + r"\b")
SUMMARY_LINE = re.compile("^" + WORD + r" (\S+)(?: - (.*))?$")
CRASH_LINE = re.compile(r"worker '(gw\d+)' crashed while running '([^']+)'")
END_LINE = re.compile(r"^=+ (.*\d+ (?:passed|failed|errors?|skipped|deselected).*) =+$")
NAMES_CHARS = 6000  # of the failing tests' names, in a summary the device tool cuts at 12,000 characters


def outcomes(paths):
    """Counts and failing tests of `pytest -v` logs, from the lines printed
    as each test ended."""
    status = 0
    for path in paths:
        name = os.path.basename(path)
        try:
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as e:
            print(f"{name}: no log ({type(e).__name__}: {e})")
            status = 1
            continue
        seen, messages, crashed, end = collections.defaultdict(set), {}, {}, None
        for line in lines:
            m = XDIST_LINE.match(line) or SUMMARY_LINE.match(line)
            if m:
                seen[m.group(2)].add(m.group(1))
                if m.re is SUMMARY_LINE and m.group(3):
                    messages[m.group(2)] = m.group(3).strip()
            elif (m := PLAIN_LINE.match(line)):
                seen[m.group(1)].add(m.group(2))
            if (m := CRASH_LINE.search(line)):
                crashed[m.group(2)] = m.group(1)
                seen[m.group(2)].add("FAILED")
            if (m := END_LINE.match(line)):
                end = m.group(1)
        counts = collections.Counter()
        for test, got in seen.items():
            for outcome in OUTCOMES:
                if outcome in got and not (outcome == "PASSED" and "FAILED" in got):
                    counts[outcome] += 1
        told = ", ".join(f"{counts[o]} {o.lower()}" for o in OUTCOMES if counts[o])
        ending = f"pytest: {end}" if end else "CUT SHORT: no pytest summary, these are the tests that ended"
        print(f"{name}: {len(seen)} tests reported ({told or 'none'}"
              f"{f'; {len(crashed)} crashed their worker' if crashed else ''}); {ending}")
        bad = {t: got for t, got in seen.items() if got & {"FAILED", "ERROR", "XPASS"}}
        status |= bool(bad) or not end
        by_file = collections.defaultdict(list)
        for test in bad:
            file, _, case = test.partition("::")
            tag = " (crashed)" if test in crashed else " (error)" if "ERROR" in bad[test] else ""
            by_file[file].append((case or "<collection>") + tag)
        text, left = [], len(bad)
        for file, cases in by_file.items():
            line = f"  FAILED {file}: {', '.join(cases)}"
            if sum(map(len, text)) + len(line) > NAMES_CHARS:
                break
            text.append(line)
            left -= len(cases)
        if text:
            print("\n".join(text))
        if left:
            print(f"  ... and {left} more (see {name})")
        common = collections.Counter(messages[t][:150] for t in bad if t in messages and t not in crashed)
        common = common.most_common(8)
        for message, count in common:
            print(f"  {count} x {message}")
    return status


def _fmt(value, fmt, suffix=""):
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def _row_line(r):
    from benchmarks.cases import SHORT_DTYPE
    from benchmarks.report import fmt_bytes, fmt_time

    lead = (f"{r['mode']:<9} {r['size_label']:<11} {SHORT_DTYPE.get(r['dtype'], r['dtype']):<4} {r['amount']:<4g} "
            f"{r['contender']:<15}")
    if r["status"] != "ok":
        return f"{lead} {r['status'].upper()}: {r.get('note')}"
    mem = "-"
    if r.get("peak_extra_bytes") is not None:
        mem = f"{fmt_bytes(r['peak_extra_bytes'])} {r['peak_extra_ratio']:.2f}x"
    prof = r.get("profile") or {}
    if "kernels" in prof:
        kernels = f"{prof['kernels']} kernels {fmt_time(prof['kernel_time_s'])}"
    elif "ops" in prof:
        kernels = f"{prof['ops']} ops"
    else:
        kernels = "-"
    check = r["check"] if r["check_ok"] else f"{r['check']} <<<<"
    return (f"{lead} {fmt_time(r['median_s']):>9} x{r['reps']:<3} {_fmt(r.get('x_floor'), '.2f', 'x'):>8} "
            f"{_fmt(r.get('speedup'), '.2f', 'x'):>8} {mem:>14}  {kernels:<20} {check}")


def probe(out, paths):
    runs = {}
    for path in paths:
        try:
            with open(path) as f:
                runs[os.path.splitext(os.path.basename(path))[0]] = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{os.path.basename(path)}: unreadable ({type(e).__name__}: {e})")
    with open(out, "w") as f:
        json.dump({"runs": runs}, f, indent=1, default=str)
        f.write("\n")
    status = 0
    print("probe rows: median, reps, xfloor (times the row's floor at this run's copy bandwidth; op level: "
          "scores read + mask written once), speedup (op level: over op-topk; module level: over torch.prune), "
          "peak extra memory, kernels of one profiled call and their device time, check")
    for stem, payload in runs.items():
        rows = payload.get("rows", [])
        copy = next((r.get("copy_gbps") for r in rows if r.get("copy_gbps")), None)
        print(f"-- {stem}: {len(rows)} rows, exit {payload.get('exit_status', 'unfinished')}, "
              f"{payload.get('elapsed_s', 0):.0f} s; copy bandwidth {_fmt(copy, '.0f', ' GB/s')} (first case)")
        for r in rows:
            print(_row_line(r))
            if r["status"] == "ok" and not r["check_ok"]:
                status = 1
        if payload.get("exit_status") not in (0, None):
            status = 1
    for stem, payload in runs.items():
        for r in payload.get("rows", []):
            if r["mode"] == "global" and r["contender"] == "torch.prune":
                if r["status"] == "ok":
                    print(f"torch global_unstructured on {r['model']}: completed, median {r['median_s']:.2f} s "
                          f"over {r['reps']}, peak extra {_fmt(r.get('peak_extra_bytes'), '.3g', ' B')} "
                          f"({_fmt(r.get('peak_extra_ratio'), '.2f', 'x')} the parameter bytes)")
                else:
                    print(f"torch global_unstructured on {r['model']}: {r['status']}: {r.get('note')}")
    return status


def main(argv):
    if argv[:1] == ["imports"]:
        return imports()
    if len(argv) >= 2 and argv[0] == "outcomes":
        return outcomes(argv[1:])
    if len(argv) >= 2 and argv[0] == "junit":
        return junit(argv[1:])
    if len(argv) >= 1 and argv[0] == "probe":
        return probe(argv[1], argv[2:])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
