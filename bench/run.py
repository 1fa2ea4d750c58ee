#!/usr/bin/env python3
"""Runs the scenarios and writes docs/performance.md. See bench/run.sh.

    --quick      short runs, prints results, writes nothing
    --only waf   just the WAF scenario (Portcullis' WAF vs nginx + ModSecurity + OWASP CRS), printed,
                 docs untouched
    --only contract
                 just the API contract scenario (a route defined by bench/contract/orders.yaml, its
                 JSON bodies validated, vs the same proxy without it and nginx), printed, docs untouched
    --only plain just the plain proxy against nginx, nginx-same (nginx made to send and return the
                 header fields the plain Portcullis does by default) and the upstream alone (small,
                 16k, h2), in rounds, printed, docs untouched; with --compare BIN also another build of
                 Portcullis (an A/B of two builds on the same machine at the same time)
    --only instructions
                 user-space instructions per request (valgrind's callgrind) of nginx, nginx-same and
                 the plain proxy, small / 16k / h2, the first-level cache misses of callgrind's cache
                 simulation and the size of the code a request runs (in instruction-cache lines):
                 counts that do not move with the machine's load, for comparing builds where timings
                 are too noisy; with --compare BIN also another build
    --only train the training run of a profile-guided build (bench/pgo.sh): every profile the full
                 run measures, each sent every kind of request the bench sends; measures nothing
    --bin PATH   the Portcullis binary to run (default: target/release/portcullis)
    --rounds N   rounds of every measurement (default 3; 1 with --quick): each round runs every
                 case once, each case's median is reported; with --only plain the small and 16 KiB
                 answers are also compared round by round (each round's Portcullis against the same
                 round's nginx), with how many rounds each side won and a sign test on it
    --warmup N   rounds run first and thrown away (default 1 with --rounds, else 0): a machine
                 that just booted, or caches still cold, must not weigh on the rounds that count
    -h, --help   this text
    --pgo PATH   also the plain proxy built with profile-guided optimisation (bench/pgo.sh builds
                 it; bench/run.sh --pgo builds and passes it): in the full run beside the default
                 build, with --only plain as the other build of the A/B
"""

import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "waf"))
import wafbench  # noqa: E402  (bench/waf/wafbench.py: the WAF servers' configurations)

BIN = os.path.join(ROOT, "target", "release", "portcullis")
# The command line's arguments; none when imported (bench/test_run.py tests the parsers).
ARGV = sys.argv[1:] if __name__ == "__main__" else []
QUICK = "--quick" in ARGV
ONLY = None
COMPARE = None
PGO = None
ROUNDS = None
WARMUP = None
if "-h" in ARGV or "--help" in ARGV:
    print(__doc__)
    sys.exit(0)
# Every argument is known: a typo must not start a 20-minute run that rewrites the docs.
args = iter(ARGV)
for a in args:
    if a == "--quick":
        continue
    if a.startswith("--only="):
        ONLY = a.split("=", 1)[1]
        continue
    if a not in ("--only", "--compare", "--pgo", "--bin", "--rounds", "--warmup"):
        sys.exit(f"unknown argument {a!r}; see --help")
    value = next(args, None)
    if value is None:
        sys.exit(f"{a} needs a value; see --help")
    if a == "--only":
        ONLY = value
    elif a == "--compare":
        COMPARE = os.path.abspath(value)
    elif a == "--pgo":
        PGO = os.path.abspath(value)
    elif a == "--rounds":
        if not value.isdigit() or not 1 <= int(value) <= 100:
            sys.exit(f"--rounds takes a number of rounds from 1 to 100 (got {value!r})")
        ROUNDS = int(value)
    elif a == "--warmup":
        if not value.isdigit() or not 0 <= int(value) <= 10:
            sys.exit(f"--warmup takes a number of rounds from 0 to 10 (got {value!r})")
        WARMUP = int(value)
    else:
        BIN = os.path.abspath(value)
        wafbench.BIN = BIN
if ONLY not in (None, "waf", "contract", "plain", "instructions", "train"):
    sys.exit(f"--only: the scenarios that run alone are: waf, contract, plain, instructions, train (got {ONLY})")
if COMPARE and ONLY not in ("plain", "instructions"):
    sys.exit("--compare goes with --only plain or --only instructions")
if PGO and ONLY not in (None, "plain"):
    sys.exit("--pgo goes with the full run or --only plain")
if PGO and COMPARE:
    sys.exit("--pgo and --compare both name the other build: one of them")
if PGO and ONLY == "plain":
    COMPARE = PGO
DURATION = 2 if ONLY == "train" else 3 if QUICK else 10
REPEAT = 1 if ONLY == "train" else ROUNDS if ROUNDS else 1 if QUICK else 3
# Rounds thrown away before those that count: by default one when the rounds were asked for (a
# run meant to be compared round by round), none otherwise (the runs of earlier pages).
WARMUP = WARMUP if WARMUP is not None else 1 if ROUNDS and ONLY != "train" else 0
CONNECTIONS = 64
NCPU = os.cpu_count() or 1
SERVER_CPU = "0"
LOAD_CPU = "1" if NCPU > 1 else "0"
PORTS = {"upstream": 18101, "nginx": 18102, "nginx-same": 18130, "portcullis": 18103,
         "portcullis-lean": 18132, "portcullis-secure": 18104, "portcullis-jwt": 18107, "portcullis-jwt-nocache": 18108, "portcullis-authz": 18109,
         "portcullis-rl-local": 18110, "portcullis-rl-redis": 18111}
if PGO and not ONLY:
    PORTS["portcullis-pgo"] = 18128
REDIS_PORT = 18120
# nginx before 1.25 serves h2c only on a listener of its own.
H2_PORTS = {"upstream": 18105, "nginx": 18106, "nginx-same": 18131, "portcullis": 18103, "portcullis-lean": 18132,
            "portcullis-secure": 18104,
            "portcullis-jwt": 18107, "portcullis-jwt-nocache": 18108, "portcullis-authz": 18109,
            "portcullis-rl-local": 18110, "portcullis-rl-redis": 18111, "portcullis-pgo": 18128}
ADMIN = {"portcullis": 18113, "portcullis-lean": 18133, "portcullis-secure": 18114, "portcullis-jwt": 18117,
         "portcullis-jwt-nocache": 18118, "portcullis-authz": 18119, "portcullis-rl-local": 18121,
         "portcullis-rl-redis": 18122, "portcullis-pgo": 18129}
# The Rego rule of the authz scenario.
BENCH_REGO = """package bench
import rego.v1
default allow := false
allow if {
  "read:orders" in input.principal.scopes
  input.request.method in {"GET", "HEAD"}
  not startswith(input.request.path, "/admin")
}
"""
# Extra request headers per server (the bearer token for the JWT scenarios, set in main()).
HEADERS = {}

MARKER = "## What stands between us and nginx"

# *nginx-same*: nginx made to put on the wire the header fields the plain Portcullis does by default
# (config.md, "Forwarding headers" and `security_headers`), so that the two proxies do the same work
# per request: towards the upstream the Host as sent, X-Forwarded-For/-Proto/-Host, Forwarded, the
# request id and a W3C traceparent (nginx has no span id of its own: the first 16 hex digits of its
# request id, cut by a regex map, with PCRE's JIT on); towards the client the request id and the seven security
# headers. nginx still adds its own `Server` and `Date`, where Portcullis passes the upstream's Date.
NGINX_SAME = """  map $request_id $bench_span { "~^(?<s>[0-9a-f]{16})" $s; }"""
NGINX_SAME_LOCATION = """      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\\"$http_host\\"";
      proxy_set_header X-Request-Id $request_id;
      proxy_set_header traceparent "00-$request_id-$bench_span-01";
      add_header X-Request-Id $request_id always;
      add_header X-Content-Type-Options nosniff always;
      add_header X-Frame-Options DENY always;
      add_header Content-Security-Policy "default-src 'none'; frame-ancestors 'none'" always;
      add_header Referrer-Policy no-referrer always;
      add_header Permissions-Policy "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()" always;
      add_header Cross-Origin-Resource-Policy same-origin always;"""

# The WAF scenario: Portcullis with its WAF (block, paranoia 1) and nginx + ModSecurity + OWASP CRS
# (paranoia 1), both in front of the same upstream, beside the plain proxies, on requests a WAF must
# inspect and let through.
WAF_PORTS = {"portcullis-waf": 18123, "nginx-modsec": 18125}
WAF_ADMIN = 18124
WAF_GET = "/api/items?page=2&sort=name&q=blue+shoes"
WAF_POST = "/api/orders"
# What a browser or an API client would send anyway (the same for every server in this scenario).
WAF_HEADERS = ["User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
               "Accept: application/json, text/plain, */*", "Accept-Language: en-US,en;q=0.5"]
WAF_SERVERS = ("nginx", "nginx-modsec", "portcullis", "portcullis-waf")


def waf_json_body():
    """A benign order of about 2 KiB: nested objects, an array, free text, numbers, an e-mail."""
    goods = [("Blue running shoes", 79.9), ("Wool socks, pack of three", 14.5), ("Rain jacket", 120.0),
             ("Water bottle 750 ml", 18.0), ("Trail backpack 28 l", 95.0), ("Sunglasses", 49.0),
             ("Cotton T-shirt", 19.9), ("Headlamp", 34.0), ("Rain cover for backpack", 22.0),
             ("Running cap", 17.5), ("Insoles", 25.0), ("Energy bars, box of twelve", 21.0)]
    doc = {"order_id": "A-20240611-0042", "currency": "EUR", "created": "2024-06-11T09:42:17Z",
           "customer": {"id": 5512, "name": "Ada Lovelace", "email": "ada.lovelace@example.com",
                        "phone": "+44 20 7946 0958", "newsletter": False,
                        "address": {"street": "12 Marylebone Road", "city": "London", "postcode": "NW1 5LR",
                                    "country": "GB"}},
           "items": [], "notes": "Please leave the parcel with the neighbour at number 14 if nobody is home.",
           "coupon": "SUMMER-15", "gift": False, "tags": ["web", "returning-customer"]}
    n = 0
    while len(json.dumps(doc)) < 2048:
        name, price = goods[n % len(goods)]
        doc["items"].append({"sku": f"SKU-{1001 + n}", "name": name, "quantity": 1 + n % 3, "unit_price": price,
                             "size": ["S", "M", "L", "42", "one size"][n % 5]})
        n += 1
    return json.dumps(doc)


WAF_POST_LUA = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
"""

# The API contract scenario: Portcullis with one route defined by an OpenAPI document
# (bench/contract/orders.yaml, POST /orders under /api), audit and WAF off like the plain proxy, so
# that the difference between the two is the contract step; nginx as the plain reverse proxy; the
# same POST with JSON orders the document accepts, of about 1 and 4 KiB.
CONTRACT_PORTS = {"portcullis-contract": 18126}
CONTRACT_ADMIN = 18127
# BENCH_PORT_OFFSET=N moves every port by N (another run, or something else, on the defaults).
PORT_OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))
for _ports in (PORTS, H2_PORTS, ADMIN, WAF_PORTS, CONTRACT_PORTS):
    for _k in _ports:
        _ports[_k] += PORT_OFFSET
REDIS_PORT += PORT_OFFSET
WAF_ADMIN += PORT_OFFSET
CONTRACT_ADMIN += PORT_OFFSET
CONTRACT_SPEC = os.path.join(ROOT, "bench", "contract", "orders.yaml")
CONTRACT_POST = "/api/orders"
CONTRACT_SERVERS = ("nginx", "portcullis", "portcullis-contract")
CONTRACT_SIZES = (("1k", 1024), ("4k", 4096))
CONTRACT_HEADERS = ["Accept: application/json"]


def contract_json_body(target):
    """An order of about `target` bytes that bench/contract/orders.yaml accepts: nested objects
    (customer, addresses, shipping), line items with patterned, enumerated, ranged and dated
    fields, free text, a null, booleans, a uuid, an e-mail and a date-time."""
    goods = [("Blue running shoes", 79.9), ("Wool socks, pack of three", 14.5), ("Rain jacket", 120.0),
             ("Water bottle 750 ml", 18.0), ("Trail backpack 28 l", 95.0), ("Sunglasses", 49.0),
             ("Cotton T-shirt", 19.9), ("Headlamp", 34.0), ("Rain cover for backpack", 22.0),
             ("Running cap", 17.5), ("Insoles", 25.0), ("Energy bars, box of twelve", 21.0)]
    address = {"street": "12 Marylebone Road", "city": "London", "postcode": "NW1 5LR", "country": "GB"}
    doc = {"order_id": "6f1c2d3e-0a1b-4c5d-8e9f-a0b1c2d3e4f5", "reference": "A-20240611-0042", "currency": "EUR",
           "created": "2024-06-11T09:42:17Z",
           "customer": {"id": 5512, "name": "Ada Lovelace", "email": "ada.lovelace@example.com",
                        "phone": "+44 20 7946 0958", "newsletter": False, "address": address},
           "shipping": {"method": "express", "deliver_after": "2024-06-13", "address": dict(address)},
           "items": [], "notes": "Please leave the parcel with the neighbour at number 14 if nobody is home.",
           "coupon": None, "gift": False, "tags": ["web", "returning-customer"]}
    n = 0
    while not doc["items"] or len(json.dumps(doc)) < target:
        name, price = goods[n % len(goods)]
        doc["items"].append({"sku": f"SKU-{1001 + n}", "name": name, "quantity": 1 + n % 3, "unit_price": price,
                             "size": ["S", "M", "L", "42", "one size"][n % 5], "ship_by": f"2024-06-{12 + n % 3}"})
        n += 1
    return json.dumps(doc)


def contract_invalid_bodies(body):
    """Variants of a valid order the contract refuses, each with one fault, the deep ones in the
    last line item (the whole body is walked before it is found)."""
    out = []

    def variant(label, change):
        doc = json.loads(body)
        change(doc)
        out.append((label, json.dumps(doc)))

    variant("`quantity: 0` in the last line item (minimum 1)", lambda d: d["items"][-1].update(quantity=0))
    variant("`size: \"XXL\"` in the last line item (not in the enum)", lambda d: d["items"][-1].update(size="XXL"))
    variant("`ship_by: \"soon\"` in the last line item (format date)",
            lambda d: d["items"][-1].update(ship_by="soon"))
    variant("`email: \"not-an-email\"` in the customer (format email)",
            lambda d: d["customer"].update(email="not-an-email"))
    variant("an undeclared `discount` in the last line item", lambda d: d["items"][-1].update(discount=5))
    variant("no `customer` (required)", lambda d: d.pop("customer"))
    out.append(("the last byte cut off (not JSON)", body[:-1]))
    return out

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50=%.3f p99=%.3f p999=%.3f errors=%d non2xx=%d\\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def cpu_split(pids):
    """User and system clock ticks the processes have used so far."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                user_t, system_t = stat_times(f.read())
        except OSError:
            continue
        user += user_t
        system += system_t
    return user, system


def stat_times(stat):
    """utime and stime of a /proc/PID/stat line (the command name, in parentheses, may hold
    blanks and parentheses: fields are counted after its last `)`)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_ticks(pids):
    return sum(cpu_split(pids))


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def nginx_conf(work, name, port, body, main=""):
    root = os.path.join(work, "www")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "16k"), "wb") as f:
        f.write(b"x" * 16384)
    common = f"""
worker_processes 1;
daemon off;
user root;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
{main}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {work}/{name}_body;
  proxy_temp_path {work}/{name}_proxy;
  fastcgi_temp_path {work}/{name}_fcgi;
  uwsgi_temp_path {work}/{name}_uwsgi;
  scgi_temp_path {work}/{name}_scgi;
  {body}
}}
"""
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as f:
        f.write(common)
    return path


def start(cmd, port, name, work):
    log = open(os.path.join(work, f"{name}.log"), "w")
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    wait_port(port)
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)
    except Exception:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except Exception:
            pass


def wrk(port, path, work, setup="", headers=(), timeout=None):
    lua = os.path.join(work, "report.lua")
    with open(lua, "w") as f:
        f.write(setup + WRK_LUA)
    extra = []
    for h in HEADERS.get(port, []) + list(headers):
        extra += ["-H", h]
    if timeout:
        extra += ["--timeout", timeout]
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "-s", lua,
           "-H", "Host: bench.local", *extra, f"http://127.0.0.1:{port}{path}"]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True).stdout)


def parse_wrk(out):
    """wrk's output with the RESULT line of WRK_LUA: requests per second, latency percentiles
    in ms, errors (socket errors and answers other than 2xx/3xx, together and apart)."""
    m = re.search(r"RESULT rps=([\d.]+) p50=([\d.]+) p99=([\d.]+) p999=([\d.]+) errors=(\d+) non2xx=(\d+)", out)
    if not m:
        raise RuntimeError(out)
    rps, p50, p99, p999, errors, non2xx = m.groups()
    return {"rps": float(rps), "p50": float(p50), "p99": float(p99), "p999": float(p999),
            "errors": int(errors) + int(non2xx), "socket_errors": int(errors), "non2xx": int(non2xx)}


def h2load(port, path):
    # No Host override: over HTTP/2 the authority is :authority, and nginx refuses a Host that
    # disagrees with it.
    extra = []
    for h in HEADERS.get(port, []):
        extra += ["-H", h]
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-c", "8", "-m", "32", "-D", str(DURATION), *extra,
           f"http://127.0.0.1:{port}{path}"]
    return parse_h2load(subprocess.run(cmd, capture_output=True, text=True).stdout)


def parse_h2load(out):
    """h2load's output: requests per second, the mean time for a request in ms, and the
    errors: requests that failed (h2load counts network errors among them) and answers with
    a 4xx or 5xx status (which h2load counts as done, not failed; wrk's RESULT line counts
    them as `non2xx`)."""
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    lat = re.search(r"time for request:\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", out)
    failed = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", out)
    status = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not rps or not lat or not failed or not status:
        raise RuntimeError(out)

    def ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": float(rps.group(1)), "mean": ms(lat.group(5), lat.group(6)),
            "errors": int(failed.group(1)) + int(status.group(1)) + int(status.group(2))}


def measure_once(fn, pids, upstream_pids=()):
    """One run of `fn`, with the CPU its server's processes used per request (user and system
    apart too) and, given `upstream_pids`, the CPU the upstream behind it used per request."""
    before, up_before = cpu_split(pids), cpu_split(upstream_pids)
    r = fn()
    after, up_after = cpu_split(pids), cpu_split(upstream_pids)
    total = r["rps"] * DURATION

    def per_req(ticks):
        return (ticks / os.sysconf("SC_CLK_TCK")) * 1e6 / total if total else 0.0

    r["cpu_us_per_req"] = per_req(sum(after) - sum(before))
    r["user_us_per_req"] = per_req(after[0] - before[0])
    r["sys_us_per_req"] = per_req(after[1] - before[1])
    if upstream_pids:
        r["upstream_cpu_us_per_req"] = per_req(sum(up_after) - sum(up_before))
    return r


def medians(runs):
    med = {}
    for k in runs[0]:
        med[k] = statistics.median(r[k] for r in runs)
    # How far apart the runs were: (highest - lowest) ÷ median of the request rate.
    rates = [r["rps"] for r in runs]
    med["spread"] = (max(rates) - min(rates)) / med["rps"] if med["rps"] else 0.0
    return med


# A row whose runs spread wider than this is flagged: the machine's speed changed under it.
UNSTEADY = 0.25


def measure_rounds(cases, alternate=False):
    """Measures several cases ({key: (fn, pids)}) in rounds: one run of each case per round,
    REPEAT rounds, the median of each case. Other work on the machine then falls on
    every case alike rather than on whichever ran during it. With `alternate`, every other
    round runs the cases in reverse order, so that a steady drift of the machine's speed favours
    no case: over two rounds each case ran as often early as late."""
    runs = {key: [] for key in cases}
    for i in range(WARMUP):
        for key, (fn, pids, *upstream) in cases.items():
            print(*key, f"warm-up {i + 1}/{WARMUP} (not counted)", measure_once(fn, pids, *upstream), flush=True)
    for i in range(REPEAT):
        order = list(cases.items())
        if alternate and i % 2 == 1:
            order.reverse()
        for key, (fn, pids, *upstream) in order:
            runs[key].append(measure_once(fn, pids, *upstream))
            print(*key, f"run {i + 1}/{REPEAT}", runs[key][-1], flush=True)
    # Each case's runs stay beside its medians, in round order, for round-by-round comparisons.
    return {key: dict(medians(r), runs=r) for key, r in runs.items()}


def warmup_note():
    """How many rounds ran first and were thrown away, for the reports; empty when none."""
    return f" (after {WARMUP} warm-up round{'s' if WARMUP != 1 else ''}, not counted)" if WARMUP else ""


def sign_test(wins, n):
    """One-sided sign test: the chance of at least `wins` wins in `n` rounds if each round were a
    coin toss (neither side faster)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def round_by_round(r, name, base, test):
    """Round i of `name` against round i of `base` (the two ran minutes apart, in the same round):
    per round the request rate's ratio and the p99's; then how many rounds `name` served more
    requests and how many it had the lower p99, each with its sign test. None without rounds."""
    a, b = r.get((name, test), {}).get("runs"), r.get((base, test), {}).get("runs")
    if not a or not b or len(a) != len(b):
        return None
    rounds = [(x["rps"] / y["rps"] if y["rps"] else 0.0, x["p99"] / y["p99"] if y["p99"] else float("inf"))
              for x, y in zip(a, b)]
    n = len(rounds)
    faster = sum(1 for rps, _ in rounds if rps > 1.0)
    lower = sum(1 for _, p99 in rounds if p99 < 1.0)
    return {"rounds": rounds, "n": n, "faster": faster, "lower_p99": lower,
            "p_faster": sign_test(faster, n), "p_lower_p99": sign_test(lower, n),
            "both": sum(1 for rps, p99 in rounds if rps >= 1.0 and p99 < 1.0),
            "median_rps": statistics.median(rps for rps, _ in rounds),
            "median_p99": statistics.median(p99 for _, p99 in rounds)}


def round_report(r):
    """The plain scenario's small and 16 KiB answers, Portcullis (and B) against nginx round by
    round: the issue's target is at least nginx's request rate with a lower p99."""
    names = ["portcullis"] + (["portcullis-b"] if ("portcullis-b", "small") in r else [])
    lines = []
    for test in ("small", "16k"):
        cmp = {n: round_by_round(r, n, "nginx", test) for n in names}
        if any(c is None for c in cmp.values()):
            continue
        n = cmp[names[0]]["n"]
        lines += ["", f"Round by round, {test} answers, ÷ nginx in the same round (request rate / p99):", "",
                  "| round | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for i in range(n):
            cells = [f"{cmp[m]['rounds'][i][0]:.3f} / {cmp[m]['rounds'][i][1]:.3f}" for m in names]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        lines.append("| median | " + " | ".join(f"{cmp[m]['median_rps']:.3f} / {cmp[m]['median_p99']:.3f}"
                                                 for m in names) + " |")
        for m in names:
            c = cmp[m]
            lines.append(f"\n{m}, {test}: more requests per second than nginx in {c['faster']} of {n} rounds "
                         f"(sign test p = {c['p_faster']:.3g}), a lower p99 in {c['lower_p99']} of {n} "
                         f"(p = {c['p_lower_p99']:.3g}), both in {c['both']} of {n}.")
    return lines


# *lean*: the plain proxy made to put on the wire what the plain nginx does (the forwarding
# fields, nothing more: no request id, no `traceparent` of its own, no security headers), the
# counterpart of *nginx-same* — the two same-work comparisons.
LEAN = """
server:
  request_id: { upstream: false, response: false }
  trace_context: pass
  forwarded_headers: { forwarded: false }
security_headers: { strict_transport_security: false, content_type_options: false, frame_options: false,
  content_security_policy: false, referrer_policy: false, permissions_policy: false,
  cross_origin_resource_policy: false }
"""


def portcullis_conf(work, name, port, admin, secure, jwt=None, rl=None, openapi=None, lean=False):
    extra = ""
    if secure:
        extra = """
server:
  trusted_proxies: [10.0.0.0/8]
  ip_filter: { deny: [192.0.2.0/24, 198.51.100.0/24, "2001:db8::/32"] }
  limits: { max_uri_bytes: 4KiB, max_header_count: 64, max_body_bytes: 1MiB }
audit: { output: file, path: %s/audit.jsonl }
""" % work
    else:
        # The plain proxy: no audit, and the WAF (on by default) off.
        extra = "audit: { enabled: false }\nwaf: { mode: off }\n" + (LEAN if lean else "")
    routes = """
routes:
  - { name: other-1, match: { path: "/api/orders/{id}", methods: [GET] }, upstream: up }
  - { name: other-2, match: { prefix: /admin }, upstream: up, ip_filter: { allow: [10.0.0.0/8] } }
  - { name: all, match: { prefix: / }, upstream: up%s }
""" % ((", auth: { methods: [jwt] }, authz: { scopes: { any_of: [read:orders] }, rego: { query: data.bench.allow } }"
        if jwt == "authz" else ", auth: { methods: [jwt] }, authz: { allow: any-authenticated }")
       if jwt else "") if secure else """
routes:
  - { name: all, match: { prefix: / }, upstream: up }
"""
    if openapi:
        # The plain profile with its one route defined by an OpenAPI document (the defaults of
        # `openapi:`: mode block, unknown fields and query parameters rejected, default parse limits).
        routes = f"""
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: up, openapi: {{ spec: "{openapi}" }} }}
"""
    if jwt:
        cache = "\n  token_cache: { max_entries: 0 }" if jwt == "uncached" else ""
        extra += f"""
auth:
  jwt:
    bench: {{ issuer: "https://issuer.bench", jwks_file: {work}/bench.jwks.json, algorithms: [EdDSA], audiences: [bench] }}{cache}
"""
        if jwt == "authz":
            with open(os.path.join(work, "bench.rego"), "w") as f:
                f.write(BENCH_REGO)
            extra += f"""
authz:
  scope_hierarchy: {{ admin:orders: [write:orders], write:orders: [read:orders] }}
  rego: {{ files: [{work}/bench.rego] }}
"""
        routes = routes.replace("upstream: up, ip_filter", "upstream: up, auth: { anonymous: true }, ip_filter")
        routes = routes.replace('methods: [GET] }, upstream: up }', 'methods: [GET] }, upstream: up, auth: { anonymous: true } }')
    if rl:
        # Two limits on every request, neither ever reached: what counting costs.
        store = (f"\n  store: redis\n  redis: {{ url: \"redis://127.0.0.1:{REDIS_PORT}\", timeout: 200ms }}"
                 if rl == "redis" else "")
        extra += f"""
rate_limits:{store}
  limits:
    per-ip: {{ key: [client_ip], rate: 50000000/minute }}
    per-route: {{ key: [client_ip, route], algorithm: sliding_window, rate: 50000000/minute }}
  global: [per-ip, per-route]
"""
    conf = f"""
listeners: [ {{ name: bench, address: "127.0.0.1:{port}" }} ]
admin: {{ address: "127.0.0.1:{admin}" }}
logging: {{ level: warn }}
{extra}
upstreams:
  up:
    targets: ["http://127.0.0.1:{PORTS['upstream']}"]
    protocol: http1
    max_idle_per_target: 256
    retries: {{ attempts: 0 }}
{routes}
"""
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(conf)
    return path


def pids_of(procs, name):
    p = procs[name]
    return [p.pid] + children(p.pid)


def http_status(port, method, path, body=None):
    return http_answer(port, method, path, body, WAF_HEADERS)[0]


def http_answer(port, method, path, body=None, extra=()):
    """(status, body text) of one request, or (the exception's name, "")."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = dict(h.split(": ", 1) for h in extra)
        headers["Host"] = "bench.local"
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, ""
    finally:
        conn.close()


def waf_scenario(work, procs):
    """Starts nginx + ModSecurity + CRS and Portcullis with its WAF; measures them and the plain
    nginx and Portcullis (already running) on the same inspected requests."""
    notes = []
    try:
        conf = wafbench.nginx_modsec_conf(work, "nginx-modsec", WAF_PORTS["nginx-modsec"], PORTS["upstream"], 1,
                                          workers=1)
        procs["nginx-modsec"] = start(["nginx", "-c", conf], WAF_PORTS["nginx-modsec"], "nginx-modsec", work)
    except RuntimeError as e:
        notes.append(f"**nginx-modsec not measured: {e}.**")
    pconf = wafbench.portcullis_conf(work, "portcullis-waf", WAF_PORTS["portcullis-waf"], WAF_ADMIN,
                                     PORTS["upstream"], 1, "block")
    err = wafbench.portcullis_check(pconf)
    if err:
        first_line = err.splitlines()[0] if err else ""
        notes.append(f"**portcullis-waf not measured: `portcullis check` refuses the `waf` configuration ({first_line}).**")
        print("portcullis-waf: " + err, file=sys.stderr)
    else:
        procs["portcullis-waf"] = start([BIN, "run", "--config", pconf, "--threads", "1", "--no-watch"],
                                        WAF_PORTS["portcullis-waf"], "portcullis-waf", work)
    ports = {"nginx": PORTS["nginx"], "portcullis": PORTS["portcullis"], **WAF_PORTS}
    names = [n for n in WAF_SERVERS if n in procs]
    body = waf_json_body()
    # Before measuring: the benign requests pass everywhere, an obvious SQLi is blocked by the WAFs.
    for name in names:
        get = http_status(ports[name], "GET", WAF_GET)
        post = http_status(ports[name], "POST", WAF_POST, body)
        if get != 200 or post != 200:
            notes.append(f"**{name} answered {get} (GET) / {post} (POST) to the benign requests.**")
        if name in WAF_PORTS:
            attack = http_status(ports[name], "GET", "/api/items?page=2&q=%27%20or%201%3D1--")
            if attack != 403:
                notes.append(f"**{name} let `?q=' or 1=1--` through ({attack}): its numbers measure no WAF.**")
            # The same in the JSON body, deep in it, as the last field: the body is inspected too.
            doc = json.loads(body)
            doc["items"][-1]["name"] = "' or 1=1--"
            attack = http_status(ports[name], "POST", WAF_POST, json.dumps(doc))
            if attack != 403:
                notes.append(f"**{name} let `' or 1=1--` in the JSON body through ({attack}): "
                             "its POST numbers measure no body inspection.**")
    for n in notes:
        print(n, file=sys.stderr)
    setup = WAF_POST_LUA % body
    cases = {}
    for name in names:
        port = ports[name]
        subprocess.run(["wrk", "-t1", "-c16", "-d1s", f"http://127.0.0.1:{port}{WAF_GET}"], capture_output=True)
        # A generous timeout: a slow WAF is measured as slow, not as failing (wrk's default is 2 s).
        cases[(name, "get")] = (lambda port=port: wrk(port, WAF_GET, work, headers=WAF_HEADERS, timeout="30s"),
                                pids_of(procs, name))
        cases[(name, "post")] = (lambda port=port: wrk(port, WAF_POST, work, setup=setup, headers=WAF_HEADERS,
                                                       timeout="30s"),
                                 pids_of(procs, name))
    # In rounds, like the main table.
    results = measure_rounds(cases)
    return {"results": results, "notes": notes, "body_bytes": len(body)}


def waf_report(waf):
    pkgs = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}, ", "libnginx-mod-http-modsecurity",
                           "libmodsecurity3", "modsecurity-crs"], capture_output=True, text=True).stdout.strip(", ")
    r = waf["results"]
    lines = []
    add = lines.append
    add("\n## WAF\n")
    add("Portcullis' WAF (`waf: { mode: block, paranoia: 1 }`, anomaly threshold 5; `bench/waf/portcullis.yaml`)")
    add("against nginx + ModSecurity v3 + OWASP CRS (paranoia 1, threshold 5; `bench/waf/`), one worker or")
    add("thread each on CPU 0, in front of the same upstream, beside the same proxies without a WAF.")
    add(f"Requests a WAF must inspect and let through: `GET {WAF_GET}` and `POST {WAF_POST}`")
    add(f"with a {waf['body_bytes']}-byte JSON order (wrk with a Lua script), both with browser-like User-Agent,")
    add("Accept and Accept-Language headers. ModSecurity runs its recommended configuration with")
    add("`SecRuleEngine On`, request bodies inspected, response bodies not (Portcullis' WAF inspects")
    add(f"requests only) and the audit log off. Packages: {pkgs or 'unknown'}.")
    add("Detection and false positives on the attack corpora: `bench/waf-corpus` (`bench/waf/compare.sh`).\n")
    add("| server | test | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | errors |")
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    label = {"get": "GET ?q=", "post": "POST 2 KiB JSON"}
    for (name, test), x in r.items():
        add(f"| {name} | {label[test]} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | {x['p999']:.2f} | {x['cpu_us_per_req']:.1f} | {int(x['errors'])} |")
    add("")
    add("| test | Portcullis+WAF ÷ nginx+ModSecurity (req/s) | Portcullis+WAF p99 ÷ nginx+ModSecurity p99 | Portcullis+WAF ÷ Portcullis | nginx+ModSecurity ÷ nginx | WAF CPU µs/req (Portcullis / ModSecurity) |")
    add("|---|---:|---:|---:|---:|---:|")

    def ratio(a, b, k="rps"):
        if a not in r or b not in r or not r[b][k]:
            return "—"
        v = r[a][k] / r[b][k]
        return f"{v:.3f}" if v < 0.1 else f"{v:.2f}"

    for test in ("get", "post"):
        pw, pc, mw, ng = (("portcullis-waf", test), ("portcullis", test), ("nginx-modsec", test), ("nginx", test))
        cost_p = f"{r[pw]['cpu_us_per_req'] - r[pc]['cpu_us_per_req']:+.1f}" if pw in r and pc in r else "—"
        cost_m = f"{r[mw]['cpu_us_per_req'] - r[ng]['cpu_us_per_req']:+.1f}" if mw in r and ng in r else "—"
        add(f"| {label[test]} | {ratio(pw, mw)} | {ratio(pw, mw, 'p99')} | {ratio(pw, pc)} | {ratio(mw, ng)} | {cost_p} / {cost_m} |")
    bad = [f"{n} {label[t]}" for (n, t), x in r.items() if x["errors"]]
    if bad:
        add("\n**Invalid runs (errors or non-2xx answers): " + ", ".join(bad) + ".**")
    for n in waf["notes"]:
        add("\n" + n)
    return lines


def contract_scenario(work, procs):
    """Starts Portcullis with the route of bench/contract/orders.yaml; checks that every server
    takes the valid orders and that the contract refuses invalid ones; then measures it, the plain
    nginx and the plain Portcullis (already running) on the same POSTs. Returns {"failed": [...]}
    instead when a check fails: its numbers would not measure what they claim."""
    failed = []
    conf = portcullis_conf(work, "portcullis-contract", CONTRACT_PORTS["portcullis-contract"], CONTRACT_ADMIN,
                           False, openapi=CONTRACT_SPEC)
    check = subprocess.run([BIN, "check", conf], capture_output=True, text=True)
    if check.returncode != 0:
        return {"failed": ["`portcullis check` refuses the configuration of portcullis-contract: "
                           + (check.stdout + check.stderr).strip()]}
    procs["portcullis-contract"] = start([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"],
                                         CONTRACT_PORTS["portcullis-contract"], "portcullis-contract", work)
    ports = {"nginx": PORTS["nginx"], "portcullis": PORTS["portcullis"], **CONTRACT_PORTS}
    bodies = {label: contract_json_body(size) for label, size in CONTRACT_SIZES}
    # Before measuring: the valid orders pass through every server, on the path that is measured ...
    for name in CONTRACT_SERVERS:
        for label, body in bodies.items():
            status, text = http_answer(ports[name], "POST", CONTRACT_POST, body, CONTRACT_HEADERS)
            if not (isinstance(status, int) and 200 <= status < 300):
                failed.append(f"{name} answered {status} to the valid {len(body)}-byte order "
                              f"(POST {CONTRACT_POST}): {text.strip()[:600]}")
    # ... and the contract refuses each invalid variant with 400 (so it does validate the bodies).
    refused = []
    for label, body in bodies.items():
        for what, bad in contract_invalid_bodies(body):
            status, text = http_answer(ports["portcullis-contract"], "POST", CONTRACT_POST, bad, CONTRACT_HEADERS)
            if status != 400:
                failed.append(f"portcullis-contract answered {status} (not 400) to the {label} order with "
                              f"{what}: {text.strip()[:600]}")
            else:
                refused.append(what)
                if label == CONTRACT_SIZES[0][0]:
                    try:
                        said = json.dumps(json.loads(text).get("violations"))
                    except ValueError:
                        said = text.strip()
                    print(f"portcullis-contract refuses {what}: 400 {said[:300]}", flush=True)
    if failed:
        return {"failed": failed}
    cases = {}
    for label, body in bodies.items():
        setup = WAF_POST_LUA % body
        for name in CONTRACT_SERVERS:
            port = ports[name]
            cases[(name, label)] = (
                lambda port=port, setup=setup: wrk(port, CONTRACT_POST, work, setup=setup, headers=CONTRACT_HEADERS,
                                                   timeout="30s"),
                pids_of(procs, name))
    # Warm up every server's connection pool with the larger order.
    lua = os.path.join(work, "warmup.lua")
    with open(lua, "w") as f:
        f.write(WAF_POST_LUA % bodies[CONTRACT_SIZES[-1][0]])
    for name in CONTRACT_SERVERS:
        subprocess.run(["wrk", "-t1", "-c16", "-d1s", "-s", lua, f"http://127.0.0.1:{ports[name]}{CONTRACT_POST}"],
                       capture_output=True)
    results = measure_rounds(cases)
    return {"results": results, "bytes": {label: len(b) for label, b in bodies.items()},
            "refused": sorted(set(refused), key=refused.index)}


def contract_report(contract):
    lines = []
    add = lines.append
    add("\n## API contract\n")
    if "failed" in contract:
        add("**Not measured: a check before measuring failed.**\n")
        for f in contract["failed"]:
            add(f"- {f}")
        return lines
    r = contract["results"]
    sizes = contract["bytes"]
    add("Portcullis with its one route defined by an OpenAPI 3.1 document (`bench/contract/orders.yaml`:")
    add("`POST /orders` under `/api`, an order with nested objects, an array of line items, integer ranges,")
    add("patterns, enums and asserted formats; the defaults of `openapi:`: `mode: block`, unknown fields")
    add("rejected, responses not checked) against the same Portcullis without it (*portcullis*, the plain profile) and")
    add("nginx as a plain reverse proxy; audit and WAF off in both Portcullis, so the difference between")
    add("them is the contract step (the operation's route, buffering the body, parsing it under the parse")
    add("limits, the walk for undeclared fields, JSON Schema validation). One worker or thread each on")
    add(f"CPU {SERVER_CPU}, in front of the same upstream. `POST {CONTRACT_POST}` with a "
        + " and a ".join(f"{n}-byte" for n in sizes.values()))
    add("JSON order the document accepts (wrk with a Lua script, `Content-Type: application/json`). Checked")
    add("before measuring: every server answers 2xx to both orders on that path, and the contract route")
    add("answers 400 to each of these variants of them: " + "; ".join(contract["refused"]) + ".")
    add(f"The cases run in rounds (one run of each per round, {REPEAT} round{'s' if REPEAT != 1 else ''}, "
        "medians), so that other work on the machine falls on all of them alike.\n")
    add("| server | test | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | errors |")
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    label = {k: f"POST {sizes[k]} B JSON" for k in sizes}
    for name in CONTRACT_SERVERS:
        for size in sizes:
            x = r[(name, size)]
            add(f"| {name} | {label[size]} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | {x['p999']:.2f} | {x['cpu_us_per_req']:.1f} | {int(x['errors'])} |")
    add("")
    add("| test | validated ÷ nginx (req/s) | validated p99 ÷ nginx p99 | validated ÷ plain (req/s) | validated p99 ÷ plain p99 | plain ÷ nginx (req/s) | contract CPU µs/req (validated − plain) |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        v, pc, ng = r[("portcullis-contract", size)], r[("portcullis", size)], r[("nginx", size)]

        def ratio(a, b, k="rps"):
            return f"{a[k] / b[k]:.2f}" if b[k] else "—"

        add(f"| {label[size]} | {ratio(v, ng)} | {ratio(v, ng, 'p99')} | {ratio(v, pc)} | {ratio(v, pc, 'p99')} | {ratio(pc, ng)} | {v['cpu_us_per_req'] - pc['cpu_us_per_req']:+.1f} |")
    bad = [f"{n} {label[t]}" for (n, t), x in r.items() if x["errors"]]
    if bad:
        add("\n**Invalid runs (errors or non-2xx answers): " + ", ".join(bad) + ".**")
    return lines


def start_proxies(work, procs):
    """The upstream and the plain nginx proxy."""
    up_conf = nginx_conf(work, "upstream", PORTS["upstream"], f"""
  server {{
    listen 127.0.0.1:{PORTS['upstream']} reuseport;
    listen 127.0.0.1:{H2_PORTS['upstream']} http2;
    location = /16k {{ root {work}/www; }}
    location / {{ return 200 "hello, bench\\n"; }}
  }}""")
    procs["upstream"] = start(["nginx", "-c", up_conf], PORTS["upstream"], "upstream", work)
    ngx_conf = nginx_conf(work, "nginx", PORTS["nginx"], f"""
  upstream backend {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']} reuseport;
    listen 127.0.0.1:{H2_PORTS['nginx']} http2;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering on;
    }}
  }}""")
    procs["nginx"] = start(["nginx", "-c", ngx_conf], PORTS["nginx"], "nginx", work)
    same_conf = nginx_conf(work, "nginx-same", PORTS["nginx-same"], f"""
  upstream backend {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 256; }}
{NGINX_SAME}
  server {{
    listen 127.0.0.1:{PORTS['nginx-same']} reuseport;
    listen 127.0.0.1:{H2_PORTS['nginx-same']} http2;
    server_tokens off;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
{NGINX_SAME_LOCATION}
    }}
  }}""", main="pcre_jit on;")
    procs["nginx-same"] = start(["nginx", "-c", same_conf], PORTS["nginx-same"], "nginx-same", work)


PLAIN_B_PORT = 18126 + PORT_OFFSET
PLAIN_B_ADMIN = 18127 + PORT_OFFSET


def plain_scenario(work, procs):
    """The plain proxy beside nginx and the upstream alone, in rounds (and another build of
    Portcullis with --compare)."""
    servers = {"upstream": (PORTS["upstream"], H2_PORTS["upstream"]),
               "nginx": (PORTS["nginx"], H2_PORTS["nginx"]),
               "nginx-same": (PORTS["nginx-same"], H2_PORTS["nginx-same"]),
               "portcullis": (PORTS["portcullis"], PORTS["portcullis"]),
               "portcullis-lean": (PORTS["portcullis-lean"], PORTS["portcullis-lean"])}
    conf = portcullis_conf(work, "portcullis-lean", PORTS["portcullis-lean"], ADMIN["portcullis-lean"], False,
                           lean=True)
    procs["portcullis-lean"] = start([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"],
                                     PORTS["portcullis-lean"], "portcullis-lean", work)
    if COMPARE:
        conf = portcullis_conf(work, "portcullis-b", PLAIN_B_PORT, PLAIN_B_ADMIN, False)
        procs["portcullis-b"] = start([COMPARE, "run", "--config", conf, "--threads", "1", "--no-watch"],
                                      PLAIN_B_PORT, "portcullis-b", work)
        servers["portcullis-b"] = (PLAIN_B_PORT, PLAIN_B_PORT)
    for name, (port, _) in servers.items():
        subprocess.run(["wrk", "-t1", "-c16", "-d1s", f"http://127.0.0.1:{port}/"], capture_output=True)
    cases = {}
    up = procs["upstream"]
    up_pids = [up.pid] + children(up.pid)
    # Load by load, every server in turn: the runs compared round by round (Portcullis and
    # nginx under the same load) are a few runs apart, not a whole round's third.
    for test in ("small", "16k", "h2"):
        for name, (port, h2port) in servers.items():
            p = procs[name]
            pids = [p.pid] + children(p.pid)
            # What the upstream behind the proxy spends per request (not for the upstream alone).
            behind = () if name == "upstream" else up_pids
            if test == "h2":
                cases[(name, test)] = (lambda h2port=h2port: h2load(h2port, "/"), pids, behind)
            else:
                path = "/" if test == "small" else "/16k"
                cases[(name, test)] = (lambda port=port, path=path: wrk(port, path, work), pids, behind)
    return measure_rounds(cases, alternate=True)


def p99_ratio(a, b):
    """a's p99 over b's, or a dash where there is none (h2load gives a mean, not a p99)."""
    return f"{a['p99'] / b['p99']:.2f}" if a.get("p99") and b.get("p99") else "—"


def plain_report(r):
    lines = ["", "| server | test | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | user | system "
             "| upstream behind it, CPU µs/req | errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, test), x in r.items():
        cpu = (f"{x['cpu_us_per_req']:.1f} | {x['user_us_per_req']:.1f} | {x['sys_us_per_req']:.1f} | "
               + (f"{x['upstream_cpu_us_per_req']:.1f}" if "upstream_cpu_us_per_req" in x else "—"))
        if test == "h2":
            lines.append(f"| {name} | h2 (mean {x['mean']:.2f} ms) | {x['rps']:.0f} | | | | "
                         f"{cpu} | {x['errors']:.0f} |")
        else:
            lines.append(f"| {name} | {test} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | "
                         f"{x['p999']:.2f} | {cpu} | {x['errors']:.0f} |")
    lines += ["", "| test | Portcullis ÷ nginx (req/s) | p99 ÷ nginx p99 | CPU ÷ nginx CPU"
              " | ÷ nginx-same (req/s) | p99 ÷ nginx-same p99 | CPU ÷ nginx-same CPU"
              " | lean ÷ nginx (req/s) | lean p99 ÷ nginx p99 | lean CPU ÷ nginx CPU"
              + (" | B ÷ nginx (req/s) | B p99 ÷ nginx p99 | B ÷ nginx-same (req/s) | B p99 ÷ nginx-same p99"
                 " | B CPU µs/req |" if COMPARE else " |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|---:|" if COMPARE else "")]
    for test in ("small", "16k", "h2"):
        pc, ng, ns = r[("portcullis", test)], r[("nginx", test)], r[("nginx-same", test)]
        ln = r[("portcullis-lean", test)]
        p99 = p99_ratio(pc, ng)
        sp99 = p99_ratio(pc, ns)
        row = (f"| {test} | {pc['rps'] / ng['rps']:.2f} | {p99} | "
               f"{pc['cpu_us_per_req'] / ng['cpu_us_per_req']:.2f} | {pc['rps'] / ns['rps']:.2f} | {sp99} | "
               f"{pc['cpu_us_per_req'] / ns['cpu_us_per_req']:.2f} | {ln['rps'] / ng['rps']:.2f} | "
               f"{p99_ratio(ln, ng)} | {ln['cpu_us_per_req'] / ng['cpu_us_per_req']:.2f} |")
        if COMPARE:
            b = r[("portcullis-b", test)]
            bp99 = p99_ratio(b, ng)
            bsp99 = p99_ratio(b, ns)
            row += (f" {b['rps'] / ng['rps']:.2f} | {bp99} | {b['rps'] / ns['rps']:.2f} | {bsp99} | "
                    f"{b['cpu_us_per_req']:.1f} |")
        lines.append(row)
    lines += ["", "*portcullis* is the plain proxy with the gateway's default header work (the same as "
              "*nginx-same*'s); *portcullis-lean* the same made to send what the plain *nginx* does "
              "(`LEAN`: no request id, `traceparent` or security headers of its own; `X-Forwarded-For`, "
              "`-Proto`, `-Host`)."]
    lines += round_report(r)
    if COMPARE:
        lines += ["", f"B (portcullis-b) is {'the PGO build, ' if PGO else ''}{build_note(COMPARE)}."]
    return lines


INSTR_REQUESTS = 5000 if QUICK else 20000


def hot_code(text, runs):
    """The code a request runs, from a callgrind dump made with --dump-instr=yes: the distinct
    64-byte lines (the first-level instruction cache's unit) holding an instruction executed at
    least `runs` times, and how many distinct instructions those are. A request path whose lines
    do not fit in the instruction cache is fetched again, in part, on every request."""
    npos, addr, skip = 1, 0, False
    count = {}
    for line in text.splitlines():
        if not line:
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            cols = line.split()
            p = cols[0]
            if p.startswith("0x"):
                addr = int(p, 16)
            elif c in "+-":
                d = int(p[1:], 16) if p[1:].startswith("0x") else int(p[1:])
                addr = addr + d if c == "+" else addr - d
            elif c != "*":
                addr = int(p)
            if skip:  # a call's line: the callee's cost, not this instruction's
                skip = False
            elif len(cols) > npos:
                count[addr] = count.get(addr, 0) + int(cols[npos])
        elif line.startswith("calls="):
            skip = True
        elif line.startswith("positions:"):
            npos = len(line.split()) - 1
    hot = [a for a, n in count.items() if n >= runs]
    return len({a >> 6 for a in hot}), len(hot)


def callgrind_ir(cmd, port, h2port, work, name):
    """Starts `cmd` under callgrind and returns user-space instructions per request for each
    test, the first-level cache misses of callgrind's cache simulation (instruction and data,
    the simulated caches sized like this machine's) and the code the requests ran (`hot_code`):
    a warm-up of 500 requests, counters zeroed, INSTR_REQUESTS requests over 16 connections
    (h2load, HTTP/1.1 keep-alive or h2c with 8 streams each), counters dumped."""
    out = os.path.join(work, f"{name}.callgrind")
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU, "valgrind", "--tool=callgrind", "--cache-sim=yes",
                          "--dump-instr=yes", f"--callgrind-out-file={out}", *cmd],
                         stdout=open(os.path.join(work, f"{name}.valgrind.log"), "w"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    result = {}
    try:
        wait_port(port, timeout=120)
        tests = {"small": (port, "/", ["--h1", "-m", "1"]), "16k": (port, "/16k", ["--h1", "-m", "1"]),
                 "h2": (h2port, "/", ["-m", "8"])}
        for test, (tport, path, mode) in tests.items():
            load = ["taskset", "-c", LOAD_CPU, "h2load", "-c", "16", *mode, "-H", ":authority: bench.local"]
            url = f"http://127.0.0.1:{tport}{path}"
            subprocess.run(load + ["-n", "500", url], capture_output=True, timeout=600)
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=60)
            r = subprocess.run(load + ["-n", str(INSTR_REQUESTS), url], capture_output=True, text=True,
                               timeout=1800)
            done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", r.stdout)
            before = set(os.listdir(work))
            subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=60)
            dump = None
            for _ in range(100):
                new = sorted(f for f in set(os.listdir(work)) - before if f.startswith(f"{name}.callgrind."))
                if new:
                    dump = os.path.join(work, new[-1])
                    break
                time.sleep(0.1)
            totals, text = {}, ""
            for _ in range(50):  # the file is written after it appears
                if dump:
                    with open(dump) as f:
                        text = f.read()
                    ev = re.search(r"^events: (.*)$", text, re.M)
                    m = re.search(r"^totals: (.*)$", text, re.M)
                    if ev and m:
                        totals = dict(zip(ev.group(1).split(), map(int, m.group(1).split())))
                        break
                time.sleep(0.1)
            ok = int(done.group(1)) if done else 0
            whole = ok == INSTR_REQUESTS and "Ir" in totals
            per = {k: totals.get(k, 0) / INSTR_REQUESTS for k in ("Ir", "I1mr", "D1mr", "D1mw")}
            # Code run by at least every other request (per-connection and per-batch work —
            # accepting, a wait for events serving several requests — falls below it).
            code_lines, code_instrs = hot_code(text, INSTR_REQUESTS // 2) if whole else (0, 0)
            result[test] = {"ir": per["Ir"] if whole else None,
                            "i1": per["I1mr"] if whole else None,
                            "d1": per["D1mr"] + per["D1mw"] if whole else None,
                            "code_kib": code_lines * 64 / 1024, "code_instrs": code_instrs,
                            "succeeded": ok}
    finally:
        stop(p)
    return result


def instructions_scenario(work, procs):
    """nginx, nginx-same and the plain proxy (and another build with --compare), each under
    callgrind."""
    runs = {}
    for name in ("nginx", "nginx-same"):
        stop(procs.pop(name))
        with open(os.path.join(work, f"{name}.conf")) as f:
            conf = f.read()
        ngx_vg = os.path.join(work, f"{name}-callgrind.conf")
        with open(ngx_vg, "w") as f:
            f.write(conf.replace("daemon off;", "daemon off;\nmaster_process off;"))
        runs[name] = (["nginx", "-c", ngx_vg], PORTS[name], H2_PORTS[name])
    stop(procs.pop("portcullis"))
    conf = portcullis_conf(work, "portcullis", PORTS["portcullis"], ADMIN["portcullis"], False)
    runs |= {"portcullis": ([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"],
                           PORTS["portcullis"], PORTS["portcullis"])}
    if COMPARE:
        runs["portcullis-b"] = ([COMPARE, "run", "--config", conf, "--threads", "1", "--no-watch"],
                                PORTS["portcullis"], PORTS["portcullis"])
    return {name: callgrind_ir(cmd, port, h2port, work, name) for name, (cmd, port, h2port) in runs.items()}


def instructions_report(r):
    tests = ("small", "16k", "h2")
    names = list(r)
    lines = ["", f"User-space instructions per request (callgrind; {INSTR_REQUESTS} requests after 500 of warm-up, "
             "h2load -c16, HTTP/1.1 keep-alive or h2c -m8):", "",
             "| test | " + " | ".join(names) + " | Portcullis ÷ nginx | Portcullis ÷ nginx-same |",
             "|---|" + "---:|" * (len(names) + 2)]
    for t in tests:
        cells = []
        for n in names:
            x = r[n][t]
            cells.append(f"{x['ir'] / 1000:.1f}k" if x["ir"] else f"failed ({x['succeeded']} ok)")
        pc = r["portcullis"][t]["ir"]
        ratios = [f"{pc / ng:.2f}" if ng and pc else "—" for ng in (r["nginx"][t]["ir"], r["nginx-same"][t]["ir"])]
        lines.append(f"| {t} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "First-level cache misses per request in the same runs (callgrind's cache simulation), "
              "instruction / data (reads and writes):", "",
              "| test | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for t in tests:
        cells = [f"{r[n][t]['i1']:.0f} / {r[n][t]['d1']:.0f}" if r[n][t]["ir"] else "—" for n in names]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", f"The code a request runs (instructions executed by at least every other request, counted in the "
              f"64-byte lines the instruction cache holds; this machine's first-level instruction cache: "
              f"{l1i_size()}), KiB / distinct instructions:", "",
              "| test | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for t in tests:
        cells = [f"{r[n][t]['code_kib']:.1f} / {r[n][t]['code_instrs']}" if r[n][t]["ir"] else "—" for n in names]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def l1i_size():
    """The first-level instruction cache of CPU 0, as the kernel reports it."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            with open(os.path.join(d, "level")) as f, open(os.path.join(d, "type")) as g:
                if f.read().strip() == "1" and g.read().strip() == "Instruction":
                    with open(os.path.join(d, "size")) as h:
                        return h.read().strip()
    except OSError:
        pass
    return "unknown"


def bench_issuer(work):
    """A demo issuer for the JWT scenarios: an EdDSA key, its JWKS, one token for the run, sent by
    every JWT server's requests."""
    subprocess.run([BIN, "keygen", "--alg", "EdDSA", "--kid", "bench", "--out-dir", work],
                   check=True, capture_output=True)
    token = subprocess.run([BIN, "token", "--key", os.path.join(work, "bench.private.pem"),
                            "--issuer", "https://issuer.bench", "--audience", "bench",
                            "--scope", "read:orders", "--ttl", "2h"],
                           check=True, capture_output=True, text=True).stdout.strip()
    for name in ("portcullis-jwt", "portcullis-jwt-nocache", "portcullis-authz"):
        HEADERS[PORTS[name]] = [f"Authorization: Bearer {token}"]


def train_scenario(work, procs):
    """The training run of a profile-guided build (bench/pgo.sh). Not the benchmark's requests
    alone, or the build would be tuned to them: every profile of the full run (plain, secure with
    the WAF and audit, JWT, JWT with authorization, rate limits, the WAF's own configuration, an
    OpenAPI contract), each sent small and 16 KiB GETs over HTTP/1.1, h2c streams, a GET with a
    query string and a JSON POST of about 2 KiB; the WAF also gets attacks to block and the contract
    invalid orders to refuse. Returns the loads that went wrong (empty when all went as meant)."""
    bench_issuer(work)
    servers = {"portcullis": PORTS["portcullis"]}
    for name, jwt, rl in (("portcullis-secure", None, None), ("portcullis-jwt", "cached", None),
                          ("portcullis-authz", "authz", None), ("portcullis-rl-local", None, "local")):
        conf = portcullis_conf(work, name, PORTS[name], ADMIN[name], True, jwt, rl)
        procs[name] = start([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"], PORTS[name], name, work)
        servers[name] = PORTS[name]
    name = "portcullis-waf"
    conf = wafbench.portcullis_conf(work, name, WAF_PORTS[name], WAF_ADMIN, PORTS["upstream"], 1, "block")
    procs[name] = start([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"], WAF_PORTS[name], name, work)
    servers[name] = WAF_PORTS[name]
    name = "portcullis-contract"
    conf = portcullis_conf(work, name, CONTRACT_PORTS[name], CONTRACT_ADMIN, False, openapi=CONTRACT_SPEC)
    procs[name] = start([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"], CONTRACT_PORTS[name], name,
                        work)
    servers[name] = CONTRACT_PORTS[name]
    waf_body = waf_json_body()
    order = contract_json_body(1024)
    bad_order = contract_invalid_bodies(order)[0][1]
    sqli = "/api/items?page=2&q=%27%20or%201%3D1--"
    # (server, method, path, body, headers, the status every answer must have); h2 marks h2c.
    loads = []
    for name in servers:
        if name != "portcullis-contract":
            loads += [(name, "GET", "/", None, [], 200), (name, "GET", "/16k", None, [], 200),
                      (name, "h2", "/", None, [], 200), (name, "GET", WAF_GET, None, WAF_HEADERS, 200),
                      # The authz profile's Rego rule lets only reads through.
                      (name, "POST", WAF_POST, waf_body, WAF_HEADERS, 403 if name == "portcullis-authz" else 200)]
    loads += [("portcullis-waf", "GET", sqli, None, WAF_HEADERS, 403),
              ("portcullis-contract", "POST", CONTRACT_POST, order, CONTRACT_HEADERS, 200),
              ("portcullis-contract", "POST", CONTRACT_POST, bad_order, CONTRACT_HEADERS, 400)]
    wrong = []
    for name, method, path, body, headers, status in loads:
        port = servers[name]
        what = f"{name} {method} {path}"
        if method == "h2":
            r = h2load(port, path)
            bad = r["errors"]
        else:
            # First one request by hand: its answer must be what the profile gives such a request
            # (a profile trained on refusals it was not meant to give would tune the wrong path).
            got = http_answer(port, method, path, body, HEADERS.get(port, []) + headers)[0]
            if got != status:
                wrong.append(f"{what}: answered {got}, expected {status}")
                continue
            r = wrk(port, path, work, setup=WAF_POST_LUA % body if body else "", headers=headers)
            bad = r["socket_errors"] + (r["non2xx"] if status < 300 else 0)
        print(f"train {what}: {r['rps']:.0f} req/s, {bad} failed", flush=True)
        if bad:
            wrong.append(f"{what}: {bad} requests failed")
    return wrong


def main_only():
    """One scenario (--only) beside the upstream and the plain proxies it compares against."""
    work = tempfile.mkdtemp(prefix="portcullis-bench-")
    os.chmod(work, 0o755)
    procs = {}
    try:
        start_proxies(work, procs)
        conf = portcullis_conf(work, "portcullis", PORTS["portcullis"], ADMIN["portcullis"], False)
        procs["portcullis"] = start([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"],
                                    PORTS["portcullis"], "portcullis", work)
        subprocess.run(["wrk", "-t1", "-c16", "-d1s", f"http://127.0.0.1:{PORTS['upstream']}/"], capture_output=True)
        if ONLY == "waf":
            lines = waf_report(waf_scenario(work, procs))
        elif ONLY == "plain":
            lines = plain_report(plain_scenario(work, procs))
        elif ONLY == "instructions":
            lines = instructions_report(instructions_scenario(work, procs))
        elif ONLY == "train":
            wrong = train_scenario(work, procs)
            lines = ["the training run went wrong (a profile trained on it would tune the wrong path):"] + wrong \
                if wrong else ["training run done"]
        else:
            contract = contract_scenario(work, procs)
            lines = contract_report(contract)
    finally:
        for p in procs.values():
            stop(p)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    if ONLY == "instructions":
        vg = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
        print(f"\n{NCPU} cores ({cpu}); {vg}. Counts are guest instructions: a stable measure of "
              "user-space work, not of time (a `rep movsb` copy counts once per byte).")
    else:
        print(f"\n{NCPU} cores ({cpu}); servers on CPU {SERVER_CPU}, wrk on CPU {LOAD_CPU}; "
              f"`wrk -t1 -c{CONNECTIONS} -d{DURATION}s`, median of {REPEAT}{warmup_note()}.")
    if ONLY in ("plain", "instructions"):
        print(f"*portcullis* is {build_note()}.")
    print("\n".join(lines))
    if os.environ.get("BENCH_KEEP"):
        # For profiling: the callgrind dumps (`*.callgrind.*`) and logs stay for callgrind_annotate.
        print(f"\nkept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if ONLY == "train" and wrong:
        sys.exit(1)
    if ONLY == "contract" and "failed" in contract:
        sys.exit(f"the contract scenario was not measured: {len(contract['failed'])} check(s) failed (above)")


def main():
    if ONLY:
        return main_only()
    work = tempfile.mkdtemp(prefix="portcullis-bench-")
    # nginx workers run as an unprivileged user: they must be able to read the files.
    os.chmod(work, 0o755)
    procs = {}
    waf = None
    contract = None
    try:
        start_proxies(work, procs)
        bench_issuer(work)
        builds = (("portcullis", False, None), ("portcullis-lean", False, None), ("portcullis-secure", True, None),
                  ("portcullis-jwt", True, "cached"), ("portcullis-jwt-nocache", True, "uncached"),
                  ("portcullis-authz", True, "authz"))
        if PGO:
            builds += (("portcullis-pgo", False, None),)
        for name, secure, jwt in builds:
            conf = portcullis_conf(work, name, PORTS[name], ADMIN[name], secure, jwt,
                                   lean=name == "portcullis-lean")
            binary = PGO if name == "portcullis-pgo" else BIN
            procs[name] = start([binary, "run", "--config", conf, "--threads", "1", "--no-watch"],
                                PORTS[name], name, work)
        # Rate limiting, in memory and through Redis (a local redis-server on CPU 0 too).
        procs["redis"] = start(["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", "",
                                "--appendonly", "no"], REDIS_PORT, "redis", work)
        for name, store in (("portcullis-rl-local", "local"), ("portcullis-rl-redis", "redis")):
            conf = portcullis_conf(work, name, PORTS[name], ADMIN[name], True, None, store)
            procs[name] = start([BIN, "run", "--config", conf, "--threads", "1", "--no-watch"],
                                PORTS[name], name, work)

        def pids(name):
            p = procs[name]
            return [p.pid] + children(p.pid)

        # Warm up every server's connection pools.
        for name in PORTS:
            hdr = sum((["-H", h] for h in HEADERS.get(PORTS[name], [])), [])
            subprocess.run(["wrk", "-t1", "-c16", "-d1s", *hdr, f"http://127.0.0.1:{PORTS[name]}/"],
                           capture_output=True)
        # In rounds (every server and load once per round): this machine's speed drifts over a
        # run (other tenants), and servers measured one after the other would take the drift
        # into their ratios.
        cases = {}
        for name in PORTS:
            for label, path in (("small", "/"), ("16k", "/16k")):
                cases[(name, label)] = (lambda port=PORTS[name], path=path: wrk(port, path, work),
                                        pids(name))
            cases[(name, "h2")] = (lambda port=H2_PORTS[name]: h2load(port, "/"), pids(name))
        results = measure_rounds(cases)
        waf = waf_scenario(work, procs)
        contract = contract_scenario(work, procs)
        if "failed" in contract:
            print("\n".join(["contract scenario not measured:"] + contract["failed"]), file=sys.stderr)
    finally:
        for p in procs.values():
            stop(p)
    report(results, waf, contract)
    shutil.rmtree(work, ignore_errors=True)


def build_note(binary=None):
    """What a measured binary is (*portcullis*: BIN), and whether it was built with a profile
    (ADR 0016). Read from the dependency file cargo writes beside the binary, which lists the
    profile the compiler read: the wrapper's settings now may not be those it was built with
    (cargo does not rebuild when they change)."""
    binary = binary or BIN
    name = ("`cargo build --release`" if binary == os.path.join(ROOT, "target", "release", "portcullis")
            else f"`{binary}`")
    try:
        with open(binary + ".d") as f:
            deps = f.read().split()
    except OSError:
        return f"{name} (no dependency file beside it: whether a profile guided its build is not known)"
    profiles = sorted({d for d in deps if d.endswith(".profdata")})
    if not profiles:
        return f"{name}, built without a profile"
    if profiles == [os.path.join(ROOT, "pgo", "portcullis.profdata")]:
        recorded = {}
        try:
            with open(os.path.join(ROOT, "pgo", "recorded.txt")) as f:
                for line in f:
                    key, _, value = line.partition(": ")
                    recorded.setdefault(key, value.strip())
        except OSError:
            pass
        return (f"{name}, profile-guided by the committed profile (`pgo/`, recorded "
                f"{recorded.get('recorded', '?')} from the code at {recorded.get('code', '?')})")
    return f"{name}, profile-guided by {', '.join(profiles)}"


def report(results, waf=None, contract=None):
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    ngv = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    lines = []
    add = lines.append
    add("# Performance\n")
    add(f"Measured by `bench/run.sh{' --pgo' if PGO else ''}` (one command: installs nginx, wrk, h2load and "
        "redis-server from the OS packages,")
    add("builds the release binary" + (" and the profile-guided one" if PGO else "")
        + ", runs everything below in one go). Numbers are medians of "
        f"{REPEAT} runs of {DURATION} s{warmup_note()}, made in rounds: each round runs every server under every load once, "
        "so that a drift of the machine's speed over the run falls on all of them alike.\n")
    add(f"- Machine: {NCPU} cores ({cpu}); servers pinned to CPU {SERVER_CPU}, load generators to CPU {LOAD_CPU}.")
    add(f"- Build: *portcullis* is {build_note()}.")
    add(f"- Upstream: nginx returning a fixed 13-byte body, or a 16 KiB file; {ngv.replace('nginx version: nginx/', 'nginx ')}.")
    add("- nginx proxy: one worker, upstream keep-alive (`keepalive 256`, HTTP/1.1, `Connection \"\"`), `Host` and")
    add("  `X-Forwarded-For` set; *nginx-same* = the same made to send and return the header fields the plain")
    add("  Portcullis does by default (forwarding fields, request id and `traceparent` upstream; the request id")
    add("  and the seven security headers to the client), so that both do the same work per request.")
    add("- Portcullis: `--threads 1`; *plain* = one prefix route, audit off; *lean* = plain made to put on")
    add("  the wire what the plain nginx does (`X-Forwarded-For`, `-Proto`, `-Host` upstream; no request id,")
    add("  `traceparent` or security headers: `server.request_id.upstream`/`.response: false`,")
    add("  `server.trace_context: pass`, every `security_headers` key `false`); *secure* = every step that")
    add("  exists now (protocol checks, normalisation, limits, trusted proxies, IP deny lists, route")
    add("  table with templates, per-route IP lists, body limits, audit to a file); *jwt* = secure plus")
    add("  an EdDSA-signed bearer token verified on every request (verified-token cache on), with the")
    add("  identity headers sent upstream; *jwt-nocache* = the same with `auth.token_cache.max_entries: 0`,")
    add("  so every request pays the full parse, signature check and claim rules; *authz* = jwt plus")
    add("  authorization of a typical request: a scope rule (through a scope hierarchy) and one Rego rule;")
    add("  *rl-local* / *rl-redis* = secure plus two rate limits on every request (GCRA per client IP and")
    add("  a sliding window per IP and route, never reached), in memory or in a local Redis (one round trip).")
    add(f"- HTTP/1.1: `wrk -t1 -c{CONNECTIONS} -d{DURATION}s` (keep-alive). HTTP/2: `h2load -c 8 -m 32 -D {DURATION}` (h2c).")
    add("- The upstream shares CPU 0 with the proxy under test, the same for nginx and Portcullis.\n")
    add("## Results\n")
    add("*spread*: the request rate's (highest − lowest) ÷ median over the rounds.\n")
    add("| server | test | req/s | spread | p50 ms | p99 ms | p99.9 ms | CPU µs/req | errors |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, label), r in results.items():
        spread = f"{r['spread']:.0%}"
        if label == "h2":
            add(f"| {name} | h2 (mean {r['mean']:.2f} ms) | {r['rps']:.0f} | {spread} | | | | {r['cpu_us_per_req']:.1f} | {int(r['errors'])} |")
        else:
            add(f"| {name} | {label} | {r['rps']:.0f} | {spread} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | {r['cpu_us_per_req']:.1f} | {int(r['errors'])} |")
    unsteady = [f"{n} {l} ({r['spread']:.0%})" for (n, l), r in results.items() if r["spread"] > UNSTEADY]
    if unsteady:
        add(f"\n**Unsteady rows (runs more than {UNSTEADY:.0%} apart: the machine's speed changed during the run; "
            "ratios involving them are not reliable): " + ", ".join(unsteady) + ".**")
    add("\n## Ratios\n")
    add("| test | Portcullis ÷ nginx (req/s) | Portcullis ÷ upstream alone | Portcullis p99 ÷ nginx p99 | Portcullis ÷ nginx-same (req/s) | Portcullis p99 ÷ nginx-same p99 | lean ÷ nginx (req/s) | lean p99 ÷ nginx p99 | secure ÷ plain | jwt ÷ secure | jwt-nocache ÷ secure | JWT CPU µs/req (cached / uncached) | authz ÷ jwt | authz CPU µs/req | rl-local ÷ secure | rl-redis ÷ secure | rate-limit CPU µs/req (local / redis) |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in ("small", "16k", "h2"):
        pc = results[("portcullis", label)]
        ng = results[("nginx", label)]
        ns = results[("nginx-same", label)]
        upr = results[("upstream", label)]
        sec = results[("portcullis-secure", label)]
        jw = results[("portcullis-jwt", label)]
        jn = results[("portcullis-jwt-nocache", label)]
        az = results[("portcullis-authz", label)]
        rll = results[("portcullis-rl-local", label)]
        rlr = results[("portcullis-rl-redis", label)]
        rlc = f"{rll['cpu_us_per_req'] - sec['cpu_us_per_req']:+.1f} / {rlr['cpu_us_per_req'] - sec['cpu_us_per_req']:+.1f}"
        p99 = p99_ratio(pc, ng)
        cost = f"{jw['cpu_us_per_req'] - sec['cpu_us_per_req']:+.1f} / {jn['cpu_us_per_req'] - sec['cpu_us_per_req']:+.1f}"
        sp99 = p99_ratio(pc, ns)
        ln = results[("portcullis-lean", label)]
        add(f"| {label} | {pc['rps'] / ng['rps']:.2f} | {pc['rps'] / upr['rps']:.2f} | {p99} | {pc['rps'] / ns['rps']:.2f} | {sp99} | {ln['rps'] / ng['rps']:.2f} | {p99_ratio(ln, ng)} | {sec['rps'] / pc['rps']:.2f} | {jw['rps'] / sec['rps']:.2f} | {jn['rps'] / sec['rps']:.2f} | {cost} | {az['rps'] / jw['rps']:.2f} | {az['cpu_us_per_req'] - jw['cpu_us_per_req']:+.1f} | {rll['rps'] / sec['rps']:.2f} | {rlr['rps'] / sec['rps']:.2f} | {rlc} |")
    if ("portcullis-pgo", "small") in results:
        add("\n*pgo* is the plain proxy's configuration run by a build guided by a profile trained in this run")
        add("(`bench/pgo.sh`; `bench/run.sh --pgo` builds it before measuring), beside the release build:\n")
        add("| test | PGO build ÷ nginx (req/s) | PGO p99 ÷ nginx p99 | PGO build ÷ nginx-same (req/s) | PGO p99 ÷ nginx-same p99 | PGO build ÷ release build (req/s) | CPU µs/req (release / PGO) |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        for label in ("small", "16k", "h2"):
            pg, pc, ng = results[("portcullis-pgo", label)], results[("portcullis", label)], results[("nginx", label)]
            ns = results[("nginx-same", label)]
            p99 = p99_ratio(pg, ng)
            sp99 = p99_ratio(pg, ns)
            add(f"| {label} | {pg['rps'] / ng['rps']:.2f} | {p99} | {pg['rps'] / ns['rps']:.2f} | {sp99} | {pg['rps'] / pc['rps']:.2f} | "
                f"{pc['cpu_us_per_req']:.1f} / {pg['cpu_us_per_req']:.1f} |")
    bad = [f"{n} {l}" for (n, l), r in results.items() if r["errors"]]
    if bad:
        add("\n**Invalid runs (errors or non-2xx answers): " + ", ".join(bad) + ".**")
    if waf:
        lines += waf_report(waf)
    if contract:
        lines += contract_report(contract)
    text = "\n".join(lines) + "\n"
    print(text)
    if not QUICK:
        # The measured part is rewritten; the analysis below it (from MARKER on) is kept.
        path = os.path.join(ROOT, "docs", "performance.md")
        kept = ""
        if os.path.exists(path):
            old = open(path).read()
            if MARKER in old:
                kept = "\n" + old[old.index(MARKER):]
        with open(path, "w") as f:
            f.write(text + kept)


if __name__ == "__main__":
    main()
