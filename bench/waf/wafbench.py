"""Servers for the WAF measurements: a 200-answering upstream, nginx + ModSecurity + OWASP CRS, and
Portcullis with its WAF. Used by bench/waf-corpus and the `waf` scenario of bench/run.py.

Everything listens on 127.0.0.1. Configuration files are rendered into a scratch directory from the
templates beside this file; nothing outside that directory is written.
"""

import glob
import os
import re
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "portcullis")

# Where Debian (and derivatives) put the pieces. The first that exists wins.
MODSEC_MODULES = ["/usr/lib/nginx/modules/ngx_http_modsecurity_module.so",
                  "/usr/share/nginx/modules/ngx_http_modsecurity_module.so"]
# ModSecurity's own recommended configuration (shipped by libnginx-mod-http-modsecurity on Debian 12
# as /etc/nginx/modsecurity.conf, by libmodsecurity / mod_security2 elsewhere as
# modsecurity.conf-recommended).
MODSEC_RECOMMENDED = ["/usr/share/nginx/docs/modsecurity/modsecurity.conf", "/etc/nginx/modsecurity.conf",
                      "/etc/modsecurity/modsecurity.conf-recommended",
                      "/usr/share/modsecurity-crs/modsecurity.conf-recommended"]
CRS_RULES = ["/usr/share/modsecurity-crs/rules"]
CRS_SETUP = ["/etc/modsecurity/crs/crs-setup.conf", "/usr/share/modsecurity-crs/crs-setup.conf.example",
             "/etc/modsecurity/crs-setup.conf"]

# A single-file request a WAF must let through: checked before every measurement.
BENIGN_QUERY = "/probe?q=blue+shoes&page=2"
ATTACK_QUERY = "/probe?q=%27%20or%201%3D1--"


def first(paths, what):
    for p in paths:
        if os.path.exists(p):
            return p
    raise RuntimeError(f"{what} not found (looked in {', '.join(paths)}); "
                       "apt-get install libnginx-mod-http-modsecurity modsecurity-crs")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def render(template, dest, values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise RuntimeError(f"{template}: unfilled placeholders {sorted(set(left))}")
    with open(dest, "w") as f:
        f.write(text)
    return dest


def upstream_conf(work, name, port, workers=1):
    """A plain nginx that answers 200 to everything (body discarded): the upstream of every WAF."""
    return render("upstream.conf.template", os.path.join(work, f"{name}.conf"),
                  {"WORK": work, "NAME": name, "PORT": port, "WORKERS": workers})


def crs_info():
    """(rules dir, setup version, name of the paranoia variable) of the installed CRS."""
    rules = first(CRS_RULES, "OWASP CRS rules")
    init = open(os.path.join(rules, "REQUEST-901-INITIALIZATION.conf")).read()
    # CRS 4 split the paranoia level into blocking and detection levels; 3.x has one.
    var = "blocking_paranoia_level" if "blocking_paranoia_level" in init else "paranoia_level"
    version = None
    for p in CRS_SETUP:
        if os.path.exists(p):
            m = re.search(r"crs_setup_version=(\d+)", open(p).read())
            if m:
                version = m.group(1)
                break
    if version is None:
        version = "400" if var == "blocking_paranoia_level" else "330"
    return rules, version, var


def modsec_rules(work, name, paranoia, threshold=5, audit=False, response_body=False):
    """Writes the ModSecurity configuration: the recommended file with the engine on, then CRS."""
    rec_path = first(MODSEC_RECOMMENDED, "modsecurity.conf-recommended")
    rec = open(rec_path).read()
    mapping = os.path.join(os.path.dirname(rec_path), "unicode.mapping")
    audit_log = os.path.join(work, f"{name}.audit.log")
    subs = [
        (r"(?m)^SecRuleEngine\s+\S+", "SecRuleEngine On"),
        (r"(?m)^SecRequestBodyAccess\s+\S+", "SecRequestBodyAccess On"),
        # Portcullis' WAF inspects requests only: like for like.
        (r"(?m)^SecResponseBodyAccess\s+\S+", f"SecResponseBodyAccess {'On' if response_body else 'Off'}"),
        (r"(?m)^SecAuditEngine\s+\S+", f"SecAuditEngine {'RelevantOnly' if audit else 'Off'}"),
        (r"(?m)^SecAuditLog\s+\S+", f"SecAuditLog {audit_log}"),
        (r"(?m)^SecTmpDir\s+\S+", f"SecTmpDir {work}/"),
        (r"(?m)^SecDataDir\s+\S+", f"SecDataDir {work}/"),
        (r"(?m)^SecUnicodeMapFile\s+\S+", f"SecUnicodeMapFile {mapping}"),
        # No call home from a benchmark.
        (r"(?m)^SecStatusEngine\s+\S+", "SecStatusEngine Off"),
    ]
    for pat, rep in subs:
        rec = re.sub(pat, rep, rec)
    rec_out = os.path.join(work, f"{name}.modsecurity.conf")
    with open(rec_out, "w") as f:
        f.write(f"# {rec_path}, rendered by bench/waf/wafbench.py (engine On, paths in the scratch dir)\n")
        f.write(rec)
    rules, version, var = crs_info()
    return render("modsec-crs.conf.template", os.path.join(work, f"{name}.modsec-main.conf"),
                  {"RECOMMENDED": rec_out, "CRS_RULES": rules, "CRS_VERSION": version,
                   "PARANOIA_VAR": var, "PARANOIA": paranoia, "THRESHOLD": threshold})


def nginx_modsec_conf(work, name, port, backend_port, paranoia, workers=1, threshold=5, audit=False,
                      log_level="warn"):
    rules = modsec_rules(work, name, paranoia, threshold, audit)
    return render("nginx-modsec.conf.template", os.path.join(work, f"{name}.conf"),
                  {"WORK": work, "NAME": name, "PORT": port, "BACKEND_PORT": backend_port,
                   "WORKERS": workers, "MODULE": first(MODSEC_MODULES, "ngx_http_modsecurity_module"),
                   "RULES": rules, "LOG_LEVEL": log_level})


def portcullis_conf(work, name, port, admin_port, backend_port, paranoia=1, mode="block"):
    """bench/waf/portcullis.yaml with its ports, paranoia level and mode replaced."""
    text = open(os.path.join(HERE, "portcullis.yaml")).read()
    reps = [("127.0.0.1:18201", f"127.0.0.1:{port}"), ("127.0.0.1:18202", f"127.0.0.1:{admin_port}"),
            ("127.0.0.1:18200", f"127.0.0.1:{backend_port}")]
    for a, b in reps:
        if a not in text:
            raise RuntimeError(f"bench/waf/portcullis.yaml: expected {a}")
        text = text.replace(a, b)
    text, n = re.subn(r"waf: \{ mode: \w+, paranoia: \d \}", f"waf: {{ mode: {mode}, paranoia: {paranoia} }}", text)
    if n != 1:
        raise RuntimeError("bench/waf/portcullis.yaml: expected one `waf: { mode: …, paranoia: … }` line")
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def portcullis_check(conf):
    """None when `portcullis check` accepts the file, else its complaint."""
    r = subprocess.run([BIN, "check", conf], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip()


class Servers:
    """Processes started for a measurement, each in its own session, stopped together."""

    def __init__(self, work, prefix=()):
        self.work = work
        self.prefix = list(prefix)
        self.procs = {}

    def start(self, name, cmd, port, timeout=60):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen(self.prefix + cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        try:
            wait_port(port, timeout, p)
        except RuntimeError:
            log.flush()
            tail = open(os.path.join(self.work, f"{name}.log")).read()[-2000:]
            raise RuntimeError(f"{name} did not start:\n{tail}")
        return p

    def nginx(self, name, conf, port):
        return self.start(name, ["nginx", "-p", self.work + "/", "-e", os.path.join(self.work, f"{name}.stderr.log"),
                                 "-c", conf], port)

    def pids(self, name):
        p = self.procs[name]
        out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        return [p.pid] + [int(x) for x in out]

    def stop_all(self):
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in self.procs.values():
            try:
                p.wait(10)
            except Exception:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        self.procs = {}
