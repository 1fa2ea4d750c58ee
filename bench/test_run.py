"""Tests of the harness's own arithmetic: the parsers of wrk's, h2load's and callgrind's output
and the medians, on outputs captured from the real tools. Run by scripts/test:

    python3 -m unittest discover -s bench -p 'test_*.py'
"""

import contextlib
import io
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

# wrk 4.2 with run.WRK_LUA, against the gateway's echo upstream.
WRK_OUT = """Running 1s test @ http://127.0.0.1:28080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    86.72us  308.40us   6.29ms   97.55%
    Req/Sec    81.55k     8.03k   88.70k    90.00%
  81125 requests in 1.00s, 71.41MB read
Requests/sec:  81106.91
Transfer/sec:     71.39MB
RESULT rps=81106.9 p50=0.039 p99=1.893 p999=3.691 errors=0 non2xx=0
"""

# h2load (nghttp2 1.52), same target.
H2LOAD_OUT = """starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 55253.00 req/s, 28.67MB/s
requests: 55253 total, 55261 started, 55253 done, 55253 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 55253 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 28.67MB (30060017) total, 2.43MB (2543913) headers (space savings 89.46%), 25.29MB (26521440) data
                     min         max         mean         sd        +/- sd
time for request:       18us     16.35ms       138us       207us    99.38%
time for connect:       68us        90us        79us        15us   100.00%
time to 1st byte:     1.20ms      1.22ms      1.21ms        14us   100.00%
req/s           :   27476.83    27771.39    27624.11      208.29   100.00%
"""


class Parsers(unittest.TestCase):
    def test_wrk(self):
        r = run.parse_wrk(WRK_OUT)
        self.assertEqual(r["rps"], 81106.9)
        self.assertEqual((r["p50"], r["p99"], r["p999"]), (0.039, 1.893, 3.691))
        self.assertEqual(r["errors"], 0)
        r = run.parse_wrk(WRK_OUT.replace("errors=0 non2xx=0", "errors=3 non2xx=4"))
        self.assertEqual((r["errors"], r["socket_errors"], r["non2xx"]), (7, 3, 4))

    def test_wrk_without_its_result_line_is_an_error(self):
        with self.assertRaises(RuntimeError):
            run.parse_wrk("unable to connect to 127.0.0.1:28080 Connection refused\n")

    def test_h2load(self):
        r = run.parse_h2load(H2LOAD_OUT)
        self.assertEqual(r["rps"], 55253.0)
        self.assertAlmostEqual(r["mean"], 0.138)
        self.assertEqual(r["errors"], 0)
        # Milliseconds and seconds as h2load writes them.
        slow = H2LOAD_OUT.replace("       138us", "     3.61ms")
        self.assertAlmostEqual(run.parse_h2load(slow)["mean"], 3.61)
        slow = H2LOAD_OUT.replace("       138us", "      1.5s")
        self.assertAlmostEqual(run.parse_h2load(slow)["mean"], 1500.0)

    def test_h2load_errors_count_failures_once_and_refusals(self):
        # h2load counts the errored among the failed: 5 failed (2 of them errored) is 5.
        out = H2LOAD_OUT.replace("55253 succeeded, 0 failed, 0 errored",
                                 "55248 succeeded, 5 failed, 2 errored")
        self.assertEqual(run.parse_h2load(out)["errors"], 5)
        # Answers with a 4xx or 5xx status are done and "succeeded" for h2load: errors here.
        out = H2LOAD_OUT.replace("55253 2xx, 0 3xx, 0 4xx, 0 5xx", "55000 2xx, 3 3xx, 200 4xx, 50 5xx")
        self.assertEqual(run.parse_h2load(out)["errors"], 250)

    def test_h2load_that_made_no_requests_is_an_error(self):
        with self.assertRaises(RuntimeError):
            run.parse_h2load("unable to connect to 127.0.0.1:28080 Connection refused\n")


class HotCode(unittest.TestCase):
    def test_lines_and_instructions_run_at_least_n_times(self):
        # Addresses: 0x1000 and 0x1004 share a 64-byte line, 0x1044 is on the next; 0x1040 ran
        # 5 times only; the line after `calls=` is the callee's inclusive cost, not an
        # instruction's own; `*` repeats the last address and `-` goes back.
        dump = "\n".join([
            "version: 1",
            "positions: instr line",
            "events: Ir",
            "fl=(1) x.rs",
            "fn=(1) f",
            "0x1000 10 30000",
            "+4 * 20000",
            "+60 * 5",
            "+4 * 12000",
            "calls=1 0x9000 3",
            "+4 * 999999",
            "* * 8000",
            "-8 * 1",
            "",
        ])
        # The skipped call line still moves the address to 0x1048, where `*` keeps it: 0x1048
        # has 8000, 0x1040 has 5 + 1.
        lines, instrs = run.hot_code(dump, 10000)
        self.assertEqual(instrs, 3)  # 0x1000, 0x1004, 0x1044
        self.assertEqual(lines, 2)
        lines, instrs = run.hot_code(dump, 8000)
        self.assertEqual((lines, instrs), (2, 4))  # and 0x1048
        lines, instrs = run.hot_code(dump, 1)
        self.assertEqual((lines, instrs), (2, 5))


class Medians(unittest.TestCase):
    def test_medians_and_spread(self):
        m = run.medians([{"rps": 100.0, "p99": 2.0}, {"rps": 80.0, "p99": 3.0},
                         {"rps": 90.0, "p99": 1.0}])
        self.assertEqual((m["rps"], m["p99"]), (90.0, 2.0))
        self.assertAlmostEqual(m["spread"], 20.0 / 90.0)

    def test_sign_test(self):
        self.assertEqual(run.sign_test(0, 5), 1.0)
        self.assertEqual(run.sign_test(5, 5), 1 / 32)
        self.assertAlmostEqual(run.sign_test(10, 12), (66 + 12 + 1) / 4096)
        self.assertEqual(run.sign_test(6, 5), 0.0)

    def test_rounds_are_compared_pairwise_in_order(self):
        def runs(*pairs):
            return {"runs": [{"rps": rps, "p99": p99} for rps, p99 in pairs]}
        r = {("nginx", "small"): runs((100.0, 2.0), (100.0, 2.0), (50.0, 4.0)),
             # Round 3: slower than round 1's nginx, faster than its own round's.
             ("portcullis", "small"): runs((101.0, 1.9), (99.0, 2.2), (60.0, 4.0))}
        c = run.round_by_round(r, "portcullis", "nginx", "small")
        self.assertEqual([round(x, 3) for x, _ in c["rounds"]], [1.01, 0.99, 1.2])
        self.assertEqual([round(y, 3) for _, y in c["rounds"]], [0.95, 1.1, 1.0])
        self.assertEqual((c["n"], c["faster"], c["lower_p99"], c["both"]), (3, 2, 1, 1))
        self.assertEqual((c["p_faster"], c["p_lower_p99"]), (0.5, 7 / 8))
        self.assertAlmostEqual(c["median_rps"], 1.01)
        self.assertIsNone(run.round_by_round(r, "portcullis", "nginx", "16k"))
        r[("nginx", "small")]["runs"].pop()
        self.assertIsNone(run.round_by_round(r, "portcullis", "nginx", "small"), "rounds must pair")

    def test_measured_rounds_keep_their_runs_in_order(self):
        seq = iter([{"rps": 3.0, "p99": 1.0}, {"rps": 1.0, "p99": 1.0}, {"rps": 2.0, "p99": 1.0}])
        real = run.measure_once
        run.measure_once = lambda fn, pids, *up: next(seq)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                out = run.measure_rounds({("x", "small"): (None, [])})
        finally:
            run.measure_once = real
        self.assertEqual(out[("x", "small")]["rps"], 2.0)
        self.assertEqual([x["rps"] for x in out[("x", "small")]["runs"]], [3.0, 1.0, 2.0])

    def test_alternate_rounds_run_the_cases_in_reverse(self):
        ran = []
        real, repeat = run.measure_once, run.REPEAT
        run.measure_once = lambda fn, pids, *up: fn()
        run.REPEAT = 3
        cases = {k: (lambda k=k: ran.append(k) or {"rps": 1.0}, []) for k in ("a", "b", "c")}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                run.measure_rounds(cases, alternate=True)
                run.measure_rounds(cases)
        finally:
            run.measure_once, run.REPEAT = real, repeat
        self.assertEqual("".join(ran), "abccbaabc" + "abcabcabc")

    def test_warm_up_rounds_run_first_and_are_not_counted(self):
        ran = []
        seq = iter([{"rps": 9.0, "p99": 1.0}, {"rps": 1.0, "p99": 1.0}, {"rps": 2.0, "p99": 1.0}])
        real, warmup, repeat = run.measure_once, run.WARMUP, run.REPEAT
        run.measure_once = lambda fn, pids, *up: ran.append(fn) or next(seq)
        run.WARMUP, run.REPEAT = 1, 2
        try:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                r = run.measure_rounds({("x", "small"): ("f", [])})
        finally:
            run.measure_once, run.WARMUP, run.REPEAT = real, warmup, repeat
        self.assertEqual(len(ran), 3, "one warm-up run, then the two rounds")
        self.assertEqual([x["rps"] for x in r[("x", "small")]["runs"]], [1.0, 2.0])
        self.assertIn("warm-up 1/1 (not counted)", out.getvalue())
        self.assertEqual(run.warmup_note(), "")
        run.WARMUP = 1
        try:
            self.assertEqual(run.warmup_note(), " (after 1 warm-up round, not counted)")
        finally:
            run.WARMUP = warmup

    def test_stat_times_are_counted_after_the_command_name(self):
        # A command name with a blank and a parenthesis, as nginx's workers have.
        line = ("4242 (nginx: worker) x) S 4241 4241 4241 0 -1 4194624 1200 0 0 0 "
                "731 2954 0 0 20 0 1 0 123456 1000000 500 18446744073709551615")
        self.assertEqual(run.stat_times(line), (731, 2954))

    def test_the_plain_report_splits_cpu_and_gives_the_upstream_behind(self):
        row = {"rps": 1000.0, "p50": 1.0, "p99": 2.0, "p999": 3.0, "errors": 0, "mean": 1.0,
               "cpu_us_per_req": 13.0, "user_us_per_req": 3.0, "sys_us_per_req": 10.0}
        behind = dict(row, upstream_cpu_us_per_req=6.5)
        r = {}
        for name in ("upstream", "nginx", "nginx-same", "portcullis", "portcullis-lean"):
            for test in ("small", "16k", "h2"):
                r[(name, test)] = row if name == "upstream" else behind
        text = "\n".join(run.plain_report(r))
        self.assertIn("| upstream | small | 1000 | 1.00 | 2.00 | 3.00 | 13.0 | 3.0 | 10.0 | — | 0 |", text)
        self.assertIn("| portcullis | small | 1000 | 1.00 | 2.00 | 3.00 | 13.0 | 3.0 | 10.0 | 6.5 | 0 |", text)
        self.assertIn("| small | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |", text)
        self.assertNotIn("Round by round", text)
        # With each case's rounds kept, small and 16 KiB answers are compared round by round.
        for test in ("small", "16k"):
            r[("nginx", test)] = dict(behind, runs=[{"rps": 100.0, "p99": 2.0}] * 2)
            r[("portcullis", test)] = dict(behind, runs=[{"rps": 102.0, "p99": 1.8}, {"rps": 98.0, "p99": 1.9}])
        text = "\n".join(run.plain_report(r))
        self.assertIn("Round by round, small answers", text)
        self.assertIn("| 1 | 1.020 / 0.900 |", text)
        self.assertIn("| 2 | 0.980 / 0.950 |", text)
        self.assertIn("| median | 1.000 / 0.925 |", text)
        self.assertIn("portcullis, 16k: more requests per second than nginx in 1 of 2 rounds (sign test p = 0.75), "
                      "a lower p99 in 2 of 2 (p = 0.25), both in 1 of 2.", text)


if __name__ == "__main__":
    unittest.main()


class BenchConfigs(unittest.TestCase):
    """The configurations the full run gives the gateway pass `portcullis check` (a validation
    rule added later once broke the full run at its rate-limit profile). Needs the debug binary:
    scripts/test runs these tests after `cargo test`, which builds it."""

    def test_the_profiles_pass_check(self):
        import subprocess
        import tempfile
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        binary = os.path.join(root, "target", "debug", "portcullis")
        if not os.path.exists(binary):
            if os.environ.get("CI"):
                self.fail("target/debug/portcullis is missing: scripts/test runs this after cargo test")
            self.skipTest("no target/debug/portcullis (build it, or run scripts/test)")
        with tempfile.TemporaryDirectory() as work:
            confs = [run.portcullis_conf(work, "plain", 18900, 18901, False),
                     run.portcullis_conf(work, "lean", 18900, 18901, False, lean=True),
                     run.portcullis_conf(work, "secure", 18900, 18901, True),
                     run.portcullis_conf(work, "rl-local", 18900, 18901, True, None, "local"),
                     run.portcullis_conf(work, "rl-redis", 18900, 18901, True, None, "redis")]
            out = subprocess.run([binary, "check"] + confs, capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
