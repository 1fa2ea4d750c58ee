"""Tests of scripts/rustc-pgo, the rustc wrapper that gives release builds the committed
profile (pgo/). Each case runs the real script, copied into a scratch tree with a profile and a
record of its own, in front of a stand-in compiler that prints the arguments it was given; the
last cases check the checkout's own profile and configuration, and that the compiler at hand
reads the profile when the wrapper says it does. Run by scripts/test:

    python3 -m unittest discover -s bench -p 'test_*.py'
"""

import os
import shutil
import stat
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(ROOT, "scripts", "rustc-pgo")

RECORDED = """# The profile in pgo/portcullis.profdata, made by bench/pgo.sh --record; read by scripts/rustc-pgo.
code: 0123abc
recorded: 2026-12-06T01:00Z
rustc 1.95.0 (59807616e 2026-04-14)
binary: rustc
commit-hash: 59807616e1fa2540724bfbac14d7976d7e4a3860
commit-date: 2026-04-14
host: x86_64-unknown-linux-gnu
release: 1.95.0
LLVM version: 22.1.2
"""

# A stand-in compiler: answers -vV with $FAKE_VV (by default the recorder's), otherwise prints
# each argument on a line of its own.
FAKE_RUSTC = """#!/bin/sh
if [ "$1" = -vV ]; then
  printf '%s\\n' "$FAKE_VV"
  exit 0
fi
for a in "$@"; do printf '%s\\n' "$a"; done
"""
RECORDED_VV = RECORDED[RECORDED.index("rustc 1.95.0"):].rstrip("\n")
RECORDER = "59807616e1fa2540724bfbac14d7976d7e4a3860"

RELEASE = ["--crate-name", "tokio", "--edition=2021", "src/lib.rs", "--crate-type", "lib",
           "--emit=dep-info,metadata,link", "-C", "opt-level=3", "-C", "embed-bitcode=no"]
DEBUG = ["--crate-name", "tokio", "src/lib.rs", "--crate-type", "lib",
         "--emit=dep-info,metadata,link", "-C", "embed-bitcode=no", "-C", "debuginfo=1"]
CLIPPY = ["--crate-name", "tokio", "src/lib.rs", "--emit=dep-info,metadata", "-C", "opt-level=3"]


class Wrapper(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rustc-pgo-")
        os.makedirs(os.path.join(self.dir, "scripts"))
        os.makedirs(os.path.join(self.dir, "pgo"))
        self.wrapper = os.path.join(self.dir, "scripts", "rustc-pgo")
        shutil.copy(WRAPPER, self.wrapper)
        self.profile = os.path.join(self.dir, "pgo", "portcullis.profdata")
        with open(self.profile, "wb") as f:
            f.write(b"not read by the stand-in")
        with open(os.path.join(self.dir, "pgo", "recorded.txt"), "w") as f:
            f.write(RECORDED)
        self.rustc = os.path.join(self.dir, "rustc")
        with open(self.rustc, "w") as f:
            f.write(FAKE_RUSTC)
        os.chmod(self.rustc, os.stat(self.rustc).st_mode | stat.S_IXUSR)
        self.env = dict(os.environ, FAKE_VV=RECORDED_VV)
        for k in ("PORTCULLIS_PGO", "PORTCULLIS_PGO_DATA", "PORTCULLIS_PGO_PROFILE"):
            self.env.pop(k, None)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def run_wrapper(self, args, **env):
        e = dict(self.env, **env)
        out = subprocess.run([self.wrapper, self.rustc] + args, env=e, capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL)
        return out.stdout.splitlines()

    def status(self, **env):
        e = dict(self.env, **env)
        out = subprocess.run([self.wrapper, "--status", self.rustc], env=e, capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL)
        return out.stdout.strip()

    def with_profile(self, args, warn=False):
        tail = ["-Cprofile-use=" + self.profile]
        if not warn:
            tail.append("-Cllvm-args=-no-pgo-warn-mismatch")
        return args + tail

    def test_release_link_gets_the_profile_by_absolute_path(self):
        # Absolute: cargo runs the compiler in each dependency's own directory.
        self.assertTrue(os.path.isabs(self.profile))
        self.assertEqual(self.run_wrapper(RELEASE), self.with_profile(RELEASE))
        self.assertIn("use pgo/portcullis.profdata", self.status())
        self.assertIn("from the code at 0123abc", self.status())

    def test_joined_spellings_and_an_explicit_matching_target(self):
        args = ["--crate-name", "x", "--emit=link", "-Copt-level=3", "--target",
                "x86_64-unknown-linux-gnu"]
        self.assertEqual(self.run_wrapper(args)[-2:], self.with_profile(args)[-2:])
        args = ["--crate-name", "x", "--emit=link", "-Copt-level=3", "--target=x86_64-unknown-linux-gnu"]
        self.assertTrue(self.run_wrapper(args)[-2].startswith("-Cprofile-use="))

    def test_other_builds_pass_through_unchanged(self):
        for args in (DEBUG, CLIPPY, ["-vV"], ["-", "--crate-name", "___", "--print=file-names"],
                     RELEASE[:-4] + ["-C", "opt-level=2"] + RELEASE[-2:]):
            self.assertEqual(self.run_wrapper(args), args if args != ["-vV"] else RECORDED_VV.split("\n"))

    def test_a_profiling_build_of_its_own_is_left_alone(self):
        for extra in (["-Cprofile-generate=/tmp/d"], ["-C", "profile-generate=/tmp/d"],
                      ["-Cprofile-use=/tmp/m.profdata"], ["-C", "profile-use=/tmp/m.profdata"]):
            self.assertEqual(self.run_wrapper(RELEASE + extra), RELEASE + extra)

    def test_another_target_or_compiler_is_compiled_without_it(self):
        args = RELEASE + ["--target", "aarch64-unknown-linux-gnu"]
        self.assertEqual(self.run_wrapper(args), args)
        other = RECORDED_VV.replace(RECORDER, "0123456789abcdef0123456789abcdef01234567").replace(
            "(59807616e", "(012345678")
        self.assertEqual(self.run_wrapper(RELEASE, FAKE_VV=other), RELEASE)
        self.assertEqual(self.status(FAKE_VV=other),
                         "release builds here do not use the profile: the compiler is rustc 1.95.0 "
                         "(012345678 2026-04-14) with LLVM 22.1.2, the profile was recorded with "
                         "rustc 1.95.0 (59807616e 2026-04-14) with LLVM 22.1.2")
        # The same rustc built against another LLVM (a distribution's): it may not even read the
        # profile's format.
        distro = RECORDED_VV.replace("LLVM version: 22.1.2", "LLVM version: 19.1.7")
        self.assertEqual(self.run_wrapper(RELEASE, FAKE_VV=distro), RELEASE)
        self.assertIn("with LLVM 19.1.7, the profile was recorded with", self.status(FAKE_VV=distro))
        other_host = RECORDED_VV.replace("x86_64-unknown-linux-gnu", "aarch64-apple-darwin")
        self.assertEqual(self.run_wrapper(RELEASE, FAKE_VV=other_host), RELEASE)
        self.assertIn("the target is aarch64-apple-darwin", self.status(FAKE_VV=other_host))

    def test_coverage_builds_are_left_alone(self):
        for extra in (["-Cinstrument-coverage"], ["-C", "instrument-coverage"],
                      ["-C", "instrument-coverage=all"]):
            self.assertEqual(self.run_wrapper(RELEASE + extra), RELEASE + extra)
        for extra in (["-Cinstrument-coverage=off"], ["-C", "instrument-coverage=no"]):
            self.assertEqual(self.run_wrapper(RELEASE + extra), self.with_profile(RELEASE + extra))

    def test_arguments_pass_whole(self):
        args = RELEASE + ["--cfg", 'feature="with space"', "", "--remap-path-prefix", "/a b=/c"]
        self.assertEqual(self.run_wrapper(args), self.with_profile(args))
        self.assertEqual(self.run_wrapper(DEBUG + ["a b", ""]), DEBUG + ["a b", ""])

    def test_a_checkout_path_with_spaces(self):
        spaced = os.path.join(self.dir, "my checkout")
        os.makedirs(os.path.join(spaced, "scripts"))
        shutil.copytree(os.path.join(self.dir, "pgo"), os.path.join(spaced, "pgo"))
        shutil.copy(WRAPPER, os.path.join(spaced, "scripts", "rustc-pgo"))
        self.wrapper = os.path.join(spaced, "scripts", "rustc-pgo")
        self.profile = os.path.join(spaced, "pgo", "portcullis.profdata")
        self.assertEqual(self.run_wrapper(RELEASE), self.with_profile(RELEASE))

    def test_switches(self):
        self.assertEqual(self.run_wrapper(RELEASE, PORTCULLIS_PGO="off"), RELEASE)
        self.assertEqual(self.status(PORTCULLIS_PGO="off"),
                         "release builds here do not use the profile: PORTCULLIS_PGO=off")
        self.assertEqual(self.run_wrapper(RELEASE, PORTCULLIS_PGO="warn")[-1:],
                         self.with_profile(RELEASE, warn=True)[-1:])
        self.assertEqual(len(self.run_wrapper(RELEASE, PORTCULLIS_PGO="warn")), len(RELEASE) + 1)
        # A misspelt switch is not taken for "on".
        self.assertEqual(self.run_wrapper(RELEASE, PORTCULLIS_PGO="no"), RELEASE)
        self.assertIn("expected on, off, warn or generate", self.status(PORTCULLIS_PGO="no"))

    def test_generate_instruments_the_same_compilations(self):
        self.assertEqual(self.run_wrapper(RELEASE, PORTCULLIS_PGO="generate", PORTCULLIS_PGO_DATA="/d"),
                         RELEASE + ["-Cprofile-generate=/d"])
        for args in (DEBUG, CLIPPY):
            self.assertEqual(self.run_wrapper(args, PORTCULLIS_PGO="generate", PORTCULLIS_PGO_DATA="/d"), args)
        self.assertEqual(self.status(PORTCULLIS_PGO="generate"), "release builds here do not use the profile: "
                         "PORTCULLIS_PGO=generate (release builds are instrumented instead)")
        # Without an absolute directory the compilation fails rather than build uninstrumented.
        for data in ({}, {"PORTCULLIS_PGO_DATA": "target/pgo-data"}):
            out = subprocess.run([self.wrapper, self.rustc] + RELEASE,
                                 env=dict(self.env, PORTCULLIS_PGO="generate", **data),
                                 capture_output=True, text=True)
            self.assertEqual(out.returncode, 2)
            self.assertIn("needs PORTCULLIS_PGO_DATA, an absolute directory path", out.stderr)

    def test_a_named_profile_replaces_the_committed_one_for_any_compiler(self):
        other = RECORDED_VV.replace(RECORDER, "0123456789abcdef0123456789abcdef01234567")
        self.assertEqual(self.run_wrapper(RELEASE, PORTCULLIS_PGO_PROFILE="/m.profdata", FAKE_VV=other),
                         RELEASE + ["-Cprofile-use=/m.profdata", "-Cllvm-args=-no-pgo-warn-mismatch"])
        self.assertEqual(self.run_wrapper(DEBUG, PORTCULLIS_PGO_PROFILE="/m.profdata"), DEBUG)
        self.assertEqual(self.status(PORTCULLIS_PGO_PROFILE="/m.profdata"),
                         "release builds here use /m.profdata (PORTCULLIS_PGO_PROFILE)")
        self.assertEqual(self.run_wrapper(RELEASE, PORTCULLIS_PGO_PROFILE="/m.profdata", PORTCULLIS_PGO="off"),
                         RELEASE)
        out = subprocess.run([self.wrapper, self.rustc] + RELEASE,
                             env=dict(self.env, PORTCULLIS_PGO_PROFILE="m.profdata"),
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 2)
        self.assertIn("must be an absolute path", out.stderr)

    def test_a_missing_profile_is_no_profile(self):
        os.remove(self.profile)
        self.assertEqual(self.run_wrapper(RELEASE), RELEASE)
        self.assertIn("missing", self.status())


class BuildNote(unittest.TestCase):
    """bench/run.py says what it measured from the dependency file beside the binary."""

    def setUp(self):
        import sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import run
        self.run_py = run
        self.dir = tempfile.mkdtemp(prefix="build-note-")
        self.bin = os.path.join(self.dir, "portcullis")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def note(self, deps):
        if deps is not None:
            with open(self.bin + ".d", "w") as f:
                f.write(f"{self.bin}: crates/portcullis/src/main.rs {deps}\n")
        return self.run_py.build_note(self.bin)

    def test_what_the_compiler_read(self):
        committed = os.path.join(ROOT, "pgo", "portcullis.profdata")
        self.assertIn("profile-guided by the committed profile (`pgo/`, recorded ", self.note(committed))
        self.assertEqual(self.note("/x/merged.profdata"), f"`{self.bin}`, profile-guided by /x/merged.profdata")
        self.assertEqual(self.note("crates/core/src/lib.rs"), f"`{self.bin}`, built without a profile")
        os.remove(self.bin + ".d")
        self.assertIn("whether a profile guided its build is not known", self.note(None))


class Checkout(unittest.TestCase):
    def test_the_configuration_names_the_wrapper(self):
        with open(os.path.join(ROOT, ".cargo", "config.toml")) as f:
            self.assertIn('rustc-wrapper = "scripts/rustc-pgo"', f.read())
        self.assertTrue(os.access(WRAPPER, os.X_OK))

    def test_the_record_names_code_target_and_llvm(self):
        with open(os.path.join(ROOT, "pgo", "recorded.txt")) as f:
            text = f.read()
        for key in ("code: ", "recorded: ", "host: ", "commit-hash: ", "rustc "):
            self.assertIn("\n" + key, text)
        self.assertGreater(os.path.getsize(os.path.join(ROOT, "pgo", "portcullis.profdata")), 100_000)

    def test_the_compiler_at_hand_reads_the_profile_when_the_wrapper_uses_it(self):
        rustc = os.environ.get("RUSTC", "rustc")
        if shutil.which(rustc) is None:
            self.skipTest("no rustc")
        status = subprocess.run([WRAPPER, "--status", rustc], capture_output=True, text=True,
                                check=True).stdout
        if "do not use" in status:
            self.skipTest(status.strip())
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "lib.rs")
            with open(src, "w") as f:
                f.write("pub fn f(x: u32) -> u32 { if x > 3 { x * 2 } else { x + 1 } }\n")
            args = ["--crate-name", "probe", "--crate-type", "lib", "--edition=2021", src,
                    "--emit=dep-info,link", "-C", "opt-level=3", "--out-dir", d]
            out = subprocess.run([WRAPPER, rustc] + args, capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stderr, "")
            # The compiler lists the profile it read among the crate's inputs.
            with open(os.path.join(d, "probe.d")) as f:
                self.assertIn(os.path.join(ROOT, "pgo", "portcullis.profdata"), f.read())


if __name__ == "__main__":
    unittest.main()
