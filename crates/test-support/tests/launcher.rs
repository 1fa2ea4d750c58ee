//! The launcher against a stand-in executable that follows the binary's STDOUT protocol (the
//! real binary is exercised by the `portcullis` package's end-to-end tests).
//!
//! One test function on purpose: every script is written before the first process is spawned,
//! so no forked child can inherit a script still open for writing (`ETXTBSY`).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_test_support::{Gateway, run_cli};

const FAKE: &str = r#"#!/bin/sh
case "$1" in
  run)
    test "$2" = --config || exit 64
    test -f "$3" || exit 66
    echo "starting with $3" >&2
    echo "portcullis: listener public http://127.0.0.1:18080"
    echo "portcullis: listener secure https://127.0.0.1:18443"
    echo "portcullis: admin http://127.0.0.1:19901"
    echo "portcullis: ready"
    echo '{"request_id":"early","status":200}'
    echo 'not json'
    sleep 0.3
    echo '{"request_id":"late","status":404}'
    exec sleep 60
    ;;
  check)
    echo "checked $2"
    echo "warning: something" >&2
    exit 2
    ;;
esac
exit 70
"#;

const FAILING: &str = "#!/bin/sh\necho 'portcullis: listener public http://127.0.0.1:1'\necho 'error: bad config' >&2\nexit 3\n";

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn alive(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .unwrap()
        .success()
}

#[test]
fn launcher_follows_the_stdout_protocol() {
    let bins = tempfile::tempdir().unwrap();
    let fake = script(bins.path(), "fake", FAKE);
    let failing = script(bins.path(), "failing", FAILING);

    // Readiness, announced addresses, audit lines.
    let yaml = "listeners: []\n";
    let mut gw = Gateway::start(&fake, yaml).unwrap();
    assert_eq!(gw.url("public"), "http://127.0.0.1:18080");
    assert_eq!(gw.listener("public"), "127.0.0.1:18080".parse().unwrap());
    assert_eq!(gw.url("secure"), "https://127.0.0.1:18443");
    assert_eq!(gw.listener("secure").port(), 18443);
    assert_eq!(gw.admin(), "127.0.0.1:19901".parse().unwrap());
    assert_eq!(gw.admin_url(), "http://127.0.0.1:19901");
    assert_eq!(gw.config_path().file_name().unwrap(), "config.yaml");
    assert_eq!(std::fs::read_to_string(gw.config_path()).unwrap(), yaml);
    let late = gw
        .wait_for_audit(|e| e["request_id"] == "late", Duration::from_secs(5))
        .expect("late audit event");
    assert_eq!(late["status"], 404);
    let events = gw.audit_events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["request_id"], "early");
    assert!(gw.stdout_lines().contains(&"not json".to_string()));
    assert!(
        gw.wait_for_audit(|e| e["request_id"] == "never", Duration::from_millis(100))
            .is_none()
    );
    assert!(gw.stderr_text().contains("starting with "));
    let pid = gw.pid();
    assert!(alive(pid));
    gw.kill();
    assert!(!alive(pid));
    let config = gw.config_path().to_path_buf();
    drop(gw);
    assert!(!config.exists(), "temporary folder removed on drop");

    // `start_in` writes into the caller's folder; drop kills the process.
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_in(&fake, dir.path(), "x: 1\n").unwrap();
    assert_eq!(gw.config_path(), dir.path().join("config.yaml"));
    let pid = gw.pid();
    drop(gw);
    assert!(!alive(pid));
    assert!(dir.path().join("config.yaml").exists());

    // A process that exits before `ready`: the error carries what it printed.
    let err = Gateway::start(&failing, "").err().expect("start fails");
    let text = format!("{err:#}");
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("error: bad config"), "{text}");
    assert!(text.contains("portcullis: listener public"), "{text}");

    // `run_cli`.
    let out = run_cli(&fake, &["check", "some.yaml"]);
    assert_eq!(out.status, 2);
    assert_eq!(out.stdout, "checked some.yaml\n");
    assert_eq!(out.stderr, "warning: something\n");

    // A missing binary is an error, not a hang.
    let t = Instant::now();
    assert!(Gateway::start(&bins.path().join("missing"), "").is_err());
    assert!(t.elapsed() < Duration::from_secs(5));
}
