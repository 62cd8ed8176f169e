#!/usr/bin/env python3
"""Runner of the capgate black-box tests.

    python3 tests/blackbox/run.py --binary build/capgate [-k substring] [-v]

Discovers the test_* functions of the test_*.py modules beside this file
(in file order), runs each one, prints

    ok   module.test_name (0.12s)
    FAIL module.test_name: <reason>      (+ traceback and the gateway's log tail)

and ends with the line `# blackbox: P passed, F failed`.  Exit code 1 when
any test failed.  Every process a test started is killed when the test ends,
whatever happened in it.
"""

import argparse
import importlib
import inspect
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402
from harness import TestFailure  # noqa: E402


class TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise TestTimeout("test exceeded its time limit")


def _on_term(signum, frame):
    # SystemExit unwinds through the finally blocks: processes get killed.
    raise SystemExit(128 + signum)


def discover(selected_modules=None):
    mods = []
    for fn in sorted(os.listdir(HERE)):
        if fn.startswith("test_") and fn.endswith(".py"):
            name = fn[:-3]
            if selected_modules and name not in selected_modules:
                continue
            mods.append(name)
    return mods


def tests_of(mod):
    found = []
    for name, obj in vars(mod).items():
        if name.startswith("test_") and inspect.isfunction(obj) and obj.__module__ == mod.__name__:
            try:
                line = inspect.getsourcelines(obj)[1]
            except (OSError, TypeError):
                line = 0
            found.append((line, name, obj))
    found.sort(key=lambda t: t[0])
    return [(n, f) for _, n, f in found]


def first_line(e):
    s = str(e).strip() or type(e).__name__
    line = s.splitlines()[0]
    if not isinstance(e, AssertionError):
        line = "%s: %s" % (type(e).__name__, line)
    return line


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(harness.REPO, "build", "capgate"),
                    help="path of the capgate binary (default: build/capgate)")
    ap.add_argument("-k", dest="pattern", action="append", default=[],
                    help="run only tests whose 'module.test_name' contains this (repeatable: any)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print the whole gateway log on failure, and each test as it starts")
    ap.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    ap.add_argument("--timeout", type=int, default=90, help="seconds one test may take (default 90)")
    ap.add_argument("modules", nargs="*", help="module names (e.g. test_cli) to run; default all")
    args = ap.parse_args(argv)

    harness.BINARY = os.path.abspath(args.binary)
    os.environ["CAPGATE_BINARY"] = harness.BINARY
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGALRM, _on_alarm)

    passed = failed = 0
    failures = []
    interrupted = None
    t_start = time.monotonic()
    try:
        for modname in discover(args.modules):
            try:
                mod = importlib.import_module(modname)
            except Exception as e:  # noqa: BLE001
                failed += 1
                failures.append(modname)
                print("FAIL %s: cannot import: %s" % (modname, first_line(e)))
                traceback.print_exc(file=sys.stdout)
                continue
            tests = [(n, f) for n, f in tests_of(mod)
                     if not args.pattern or any(p in "%s.%s" % (modname, n) for p in args.pattern)]
            if not tests:
                continue
            harness.begin_module(modname)
            try:
                for name, fn in tests:
                    full = "%s.%s" % (modname, name)
                    if args.verbose:
                        print("...  %s" % full, flush=True)
                    harness.begin_test(full)
                    t0 = time.monotonic()
                    err = None
                    tb = None
                    ctx = ""
                    signal.alarm(args.timeout)
                    try:
                        fn()
                    except (Exception, TestTimeout) as e:  # noqa: BLE001
                        err = e
                        tb = traceback.format_exc()
                    finally:
                        signal.alarm(0)
                        if err is not None:
                            try:
                                ctx = harness.failure_context(0 if args.verbose else 25)
                            except Exception as e2:  # noqa: BLE001
                                ctx = "(no log context: %r)" % e2
                        harness.end_test()
                    if err is None and harness.sanitizer_reports:
                        err = TestFailure("sanitizer report in capgate's stderr")
                        tb = "\n".join(harness.sanitizer_reports)
                        harness.sanitizer_reports.clear()
                    dt = time.monotonic() - t0
                    if err is None:
                        passed += 1
                        print("ok   %s (%.2fs)" % (full, dt), flush=True)
                    else:
                        failed += 1
                        failures.append(full)
                        print("FAIL %s: %s" % (full, first_line(err)))
                        print("    " + tb.rstrip().replace("\n", "\n    "))
                        if ctx:
                            print("    " + ctx.replace("\n", "\n    "))
                        sys.stdout.flush()
                        if args.exitfirst:
                            raise KeyboardInterrupt
            finally:
                harness.end_module()
    except (KeyboardInterrupt, SystemExit) as e:
        interrupted = e
        print("interrupted (%s)" % (type(e).__name__,), flush=True)
    finally:
        harness.cleanup_all()
    if harness.sanitizer_reports:
        # Reports from gateways shared by a module, found at its end.
        failed += 1
        failures.append("sanitizer")
        print("FAIL sanitizer: report in capgate's stderr\n    " +
              "\n".join(harness.sanitizer_reports).replace("\n", "\n    "))

    if failures:
        print("failed (%d):" % len(failures))
        for f in failures[:40]:
            print("  " + f)
        if len(failures) > 40:
            print("  ... and %d more" % (len(failures) - 40))
    print("total time %.1fs" % (time.monotonic() - t_start))
    print("# blackbox: %d passed, %d failed" % (passed, failed))
    if isinstance(interrupted, SystemExit):
        return interrupted.code
    return 1 if failed or passed == 0 or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
