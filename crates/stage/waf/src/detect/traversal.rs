//! Path traversal and local file inclusion (rules 1400–1499).
//!
//! Dot-dot segments in the path view (decoded, backslashes turned into slashes, lowercase), the
//! encodings used to smuggle them past naive filters (overlong UTF-8, `0x2e` notation, Unicode
//! dots and slashes, `..;/`), absolute paths to files an attacker reads to take over a host,
//! PHP stream wrappers, and NUL-byte truncation.

use std::sync::LazyLock;

use super::shared::{Bank, Literals, push_once};
use crate::model::{Class, Finding, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Traversal,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        1400,
        Severity::Critical,
        1,
        "dot-dot path segment (directory traversal)",
    ),
    rule(
        1401,
        Severity::Critical,
        1,
        "dot run at the start of a path segment (traversal with stripped separators)",
    ),
    rule(
        1402,
        Severity::Critical,
        1,
        "encoded or obfuscated traversal sequence (overlong UTF-8, 0x2e notation, Unicode dots, ..;/)",
    ),
    rule(
        1403,
        Severity::Critical,
        1,
        "path to a sensitive operating-system file",
    ),
    rule(
        1404,
        Severity::Critical,
        1,
        "path to an application secret or configuration file",
    ),
    rule(
        1405,
        Severity::Critical,
        1,
        "PHP or archive stream wrapper (php://, phar://, expect:// …)",
    ),
    rule(1406, Severity::Error, 1, "NUL byte in a value"),
    rule(
        1407,
        Severity::Critical,
        1,
        "NUL byte truncating a file name",
    ),
    rule(
        1408,
        Severity::Critical,
        1,
        "path to a server log file (log poisoning)",
    ),
    rule(
        1409,
        Severity::Warning,
        2,
        "double-encoded path separator or dot",
    ),
    rule(
        1410,
        Severity::Error,
        2,
        "absolute path into a system directory",
    ),
    rule(
        1411,
        Severity::Critical,
        1,
        "Java web application private directory (WEB-INF, META-INF)",
    ),
    rule(
        1412,
        Severity::Critical,
        1,
        "path padded with repeated self-referencing dot segments",
    ),
    rule(
        1413,
        Severity::Error,
        1,
        "undecodable bytes forming a path segment (overlong UTF-8 read lossily)",
    ),
    rule(
        1414,
        Severity::Critical,
        1,
        "base64-encoded traversal or sensitive path",
    ),
    rule(
        1415,
        Severity::Critical,
        1,
        "path truncation: dot-dot after a long padding run",
    ),
];

/// Patterns over the path view (decoded, `\` → `/`, duplicate slashes collapsed, lowercase).
/// Backslashes are accepted too, so the rules hold on a less normalised view.
static PATH: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "traversal",
        &[
            (0, r"(?:^\.{2,}[/\\]|[/\\]\.{2,}[/\\]|[/\\]\.\.$)"),
            (1, r"[/\\]\.{2,}[^\s./\\]"),
            (1, r"^\.{4,}[^\s.][^\s]*$"),
            (
                3,
                r"(?:^|[/\\=:\s\x{FFFD}]|\.\.)etc[/\\](?:passwd|shadow|group\b|gshadow|sudoers|master\.passwd|pwd\.db|spwd\.db|security[/\\]|ssh[/\\]|ssl[/\\]private)",
            ),
            (
                3,
                r"(?:^|[=:\x{FFFD}]|\.\.[/\\])[/\\]?etc[/\\](?:hosts(?:\.allow|\.deny)?\b|hostname|issue|motd|crontab|cron\.d|fstab|mtab|inittab|profile|bashrc|resolv\.conf|httpd[/\\]|apache2?[/\\]|nginx[/\\]|mysql[/\\]|my\.cnf|php[0-9.]*[/\\]|environment|network[/\\]|os-release|lsb-release|pam\.d|shells|aliases|exports|xinetd|init\.d|systemd[/\\]|rc\.local|ld\.so|redhat-release|debian_version|knockd|vsftpd|proftpd|samba[/\\]|openvpn|wpa_supplicant|kubernetes[/\\]|docker[/\\])",
            ),
            (
                3,
                r"(?:^|[/\\=:\s])proc[/\\](?:(?:self|thread-self|[0-9]+)[/\\](?:environ|cmdline|maps|mem|fd\b|status|cwd|root|exe|mountinfo|stat\b|auxv|limits|net[/\\]|cgroup|task)|version|mounts|cpuinfo|meminfo|net[/\\](?:tcp|udp|arp|fib_trie|route|unix)|sched_debug|kcore|config\.gz|partitions|modules)",
            ),
            (
                3,
                r"(?:^|[/\\])(?:root|home[/\\][^/\\]+)[/\\]\.(?:ssh|bash_history|zsh_history|bashrc|profile|aws|docker|kube|gnupg|mysql_history|psql_history|viminfo|netrc|pgpass|git-credentials)",
            ),
            (
                3,
                r"\.ssh[/\\](?:id_(?:rsa|dsa|ecdsa|ed25519)|authorized_keys|known_hosts|config\b)",
            ),
            (3, r"(?:^|[/\\])id_(?:rsa|dsa|ecdsa|ed25519)(?:\.pub)?$"),
            (3, r"^[/\\](?:etc|proc)[/\\][a-z0-9_.-]"),
            (
                3,
                r"(?:^|[/\\])\.(?:bash_history|bash_profile|bash_login|bash_logout|bashrc|cshrc|tcshrc|zshrc|zsh_history|zprofile|kshrc|history|mysql_history|psql_history|sqlite_history|python_history|viminfo|lesshst|netrc|pgpass|git-credentials|rhosts|shosts|forward|xauthority|gnupg[/\\]|ssh[/\\]|aws[/\\]|kube[/\\]config|docker[/\\]config\.json)",
            ),
            (
                3,
                r"(?:^|[/\\=:\s])(?:var[/\\](?:run[/\\]secrets|run[/\\]docker\.sock|lib[/\\](?:mysql|postgresql)[/\\]|spool[/\\]cron|mail[/\\])|run[/\\]secrets[/\\]|dev[/\\](?:k?mem|port)\b)",
            ),
            (
                3,
                r"(?:^|[/\\:])(?:windows|winnt)[/\\](?:win\.ini|system\.ini|system32|syswow64|repair[/\\]|debug[/\\]|panther[/\\]|php\.ini|microsoft\.net[/\\])",
            ),
            (3, r"(?:\b|windows|winnt)(?:win|system|boot)\.ini\b"),
            (
                3,
                r"system32[/\\](?:config[/\\](?:sam|system|security|software)\b|drivers[/\\]etc[/\\]|inetsrv[/\\]|cmd\.exe|logfiles)",
            ),
            (
                3,
                r"\b[a-z]:[/\\]*(?:(?:windows|winnt)[/\\]+(?:win\.ini|system\.ini|system32[/\\]|repair|panther|debug)|boot\.ini|inetpub|(?:documents and settings|users)[/\\][^/\\]+[/\\](?:ntuser\.dat|appdata[/\\]))",
            ),
            (
                3,
                r"(?:^|[/\\])inetpub[/\\](?:wwwroot|logs|ftproot|mailroot|scripts)",
            ),
            (
                3,
                r"\b(?:unattend(?:ed)?\.xml|sysprep\.(?:inf|xml)|ntds\.dit|autoexec\.bat)\b",
            ),
            (
                4,
                r"(?:^|[/\\])\.(?:htaccess|htpasswd|htdigest|env(?:\.[a-z]+)?$|env[/\\]|git[/\\]|gitconfig|svn[/\\]|hg[/\\]|bzr[/\\]|npmrc|pypirc|ds_store|idea[/\\]|vscode[/\\]sftp)",
            ),
            (11, r"(?:^|[/\\.])(?:web-inf|meta-inf)[/\\]"),
            (
                4,
                r"(?:^|[/\\])(?:web\.config|machine\.config|applicationhost\.config|wp-config\.php|configuration\.php|localsettings\.php|local_settings\.py|settings\.php|config\.inc\.php|php\.ini|httpd\.conf|nginx\.conf|my\.cnf|tomcat-users\.xml|server\.xml|standalone\.xml|global\.asax?|database\.yml|secrets\.ya?ml|credentials\.xml|jboss-web\.xml|weblogic\.xml)\b",
            ),
            (
                8,
                r"(?:^|[/\\])var[/\\](?:log|adm)(?:[/\\]|$)|(?:^|[/\\])logs?[/\\](?:[a-z0-9_.-]+[/\\])*(?:[a-z0-9_-]*(?:access|error)[._-]?log\b|auth\.log|syslog\b|maillog|mail\.log|vsftpd\.log|xferlog)",
            ),
            (
                10,
                r"^[/\\](?:etc|proc|sys|var|usr|bin|sbin|boot|dev|root|tmp|opt|lib|srv|home)[/\\]",
            ),
        ],
    )
});

/// Patterns over the decoded view (case kept): what the path view erases or normalises.
static DECODED: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "traversal",
        &[
            (2, r"(?i)0x2e0x2e|\.\.0x(?:2f|5c)"),
            (2, r"\.\.;[/\\]"),
            (
                2,
                r"[\x{FF0E}\x{2024}\x{FE52}\x{3002}]{2}[/\\\x{FF0F}\x{2215}\x{2216}\x{FF3C}\x{29F5}\x{2044}]|\.\.[\x{FF0F}\x{2215}\x{2216}\x{FF3C}\x{29F5}\x{2044}]",
            ),
            (
                63,
                r"(?:^|[/\\\x{FFFD}])[.\x{FFFD}]*(?:\.\x{FFFD}|\x{FFFD}\.)[.\x{FFFD}]*(?:[/\\\x{FFFD}]|$)",
            ),
            (13, r"(?:^|[/\\])\x{FFFD}{2,}"),
            (2, r"\\\.\\\.(?:\\?[/\\])"),
            (
                2,
                r"(?:^|[/\\])[.\x{2024}\x{2025}\x{2026}\x{FF0E}\x{FE52}]*[\x{2024}\x{2025}\x{2026}\x{FF0E}\x{FE52}][.\x{2024}\x{2025}\x{2026}\x{FF0E}\x{FE52}]*[/\\\x{FF0F}\x{2215}\x{2216}\x{FF3C}]",
            ),
            (12, r"(?:[/\\]+\.){3,}[/\\]"),
            (
                5,
                r"(?i)\b(?:php|zip|phar|expect|glob|rar|ogg|zlib|compress\.(?:zlib|bzip2)|ssh2\.(?:shell|exec|tunnel|sftp|scp))://",
            ),
            (
                5,
                r"(?i)\bdata://|\bdata:(?:text/plain|application/x-httpd-php|text/x-php)[;,]",
            ),
        ],
    )
});

/// Patterns over the raw value: encodings a decoder may turn into replacement characters.
static RAW: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "traversal",
        &[
            (
                2,
                r"(?i)%(?:25)*c[01]%(?:25)*[89ab][0-9a-f]|%(?:25)*e0%(?:25)*80%(?:25)*[89ab][0-9a-f]|%(?:25)*f0%(?:25)*80%(?:25)*80%(?:25)*[89ab][0-9a-f]",
            ),
            (
                2,
                r"(?i)%(?:25)*u(?:002e|002f|005c|2215|2216|ff0e|ff0f|ff3c)",
            ),
            (9, r"(?i)%(?:25)+(?:2e|2f|5c)"),
        ],
    )
});

/// Literals without one of which (in the decoded value) no path-view pattern matches.
const PATH_LITS: &[&str] = &[
    "..",
    "etc",
    "proc",
    "windows",
    "winnt",
    "system32",
    ".ini",
    "inetpub",
    ".ssh",
    "id_",
    "var",
    "run",
    "dev",
    "root",
    "home",
    ".ht",
    ".env",
    ".git",
    ".svn",
    ".hg",
    ".bzr",
    "npmrc",
    "pypirc",
    ".ds_store",
    ".idea",
    ".vscode",
    "-inf",
    ".config",
    "config.",
    "configuration.php",
    "settings.p",
    "php.ini",
    ".conf",
    ".cnf",
    "tomcat-users",
    "server.xml",
    "standalone.xml",
    "global.asa",
    "database.yml",
    "secrets.y",
    "credentials.xml",
    "jboss-web",
    "weblogic.xml",
    "log",
    "unattend",
    "sysprep",
    "ntds",
    "autoexec",
    "history",
    "rc",
    "profile",
    ".bash",
    ".viminfo",
    ".lesshst",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".rhosts",
    ".shosts",
    ".forward",
    ".xauthority",
    ".gnupg",
    ".aws",
    ".kube",
    ".docker",
    "program",
    "documents and settings",
    "users",
    "/tmp",
    "/opt",
    "/usr",
    "/bin",
    "/sbin",
    "/boot",
    "/sys",
    "/lib",
    "/srv",
    "\u{FFFD}",
];

/// Literals without one of which no decoded-view pattern matches.
const DECODED_LITS: &[&str] = &[
    "0x",
    "..",
    "php:",
    "zip:",
    "phar:",
    "expect:",
    "glob:",
    "rar:",
    "ogg:",
    "zlib:",
    "compress.",
    "ssh2.",
    "data:",
    "/.",
    "\\.",
    "\u{FFFD}",
    "\u{FF0E}",
    "\u{2024}",
    "\u{2025}",
    "\u{2026}",
    "\u{FE52}",
    "\u{3002}",
    "\u{FF0F}",
    "\u{2215}",
    "\u{2216}",
    "\u{FF3C}",
    "\u{29F5}",
    "\u{2044}",
];

/// Both lists in one automaton: one scan tells which banks may match.
static LITS: LazyLock<Literals> = LazyLock::new(|| {
    let all: Vec<&str> = PATH_LITS.iter().chain(DECODED_LITS).copied().collect();
    Literals::new("traversal", &all)
});

/// NUL or its spellings: what the decoded view removes.
fn nul_at(raw: &str) -> Option<usize> {
    if let Some(i) = raw.find('\0') {
        return Some(i);
    }
    let b = raw.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        match b[i] {
            b'%' => {
                let mut j = i + 1;
                while b.get(j..j + 2) == Some(b"25") {
                    j += 2;
                }
                if b.get(j..j + 2) == Some(b"00") {
                    return Some(i);
                }
            }
            b'\\'
                if matches!(b.get(i + 1..i + 4), Some(b"x00") | Some(b"u00"))
                    && (b[i + 1] == b'x' || b.get(i + 4..i + 6) == Some(b"00")) =>
            {
                return Some(i);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The base64 a value starting with `.` or `/` encodes to starts with `L`: decode such a value
/// (short, pure base64) into `buf` and return the text.
fn base64_path<'b>(raw: &str, buf: &'b mut [u8; 384]) -> Option<&'b str> {
    let b = raw.trim_end_matches('=').as_bytes();
    if !(8..=512).contains(&b.len()) || b[0] != b'L' {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let mut n = 0usize;
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in b {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            let byte = (acc >> bits) as u8;
            *buf.get_mut(n)? = if byte == b'\\' {
                b'/'
            } else {
                byte.to_ascii_lowercase()
            };
            n += 1;
        }
    }
    std::str::from_utf8(buf.get(..n)?).ok()
}

/// A run of at least 128 identical name characters right before a dot-dot (optionally after
/// one separator): path-length truncation padding.
fn has_padding_run(s: &str) -> bool {
    let b = s.as_bytes();
    let mut run = 0usize;
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        if c == prev && c.is_ascii_alphanumeric() {
            run += 1;
        } else {
            if run >= 128 {
                let rest = &b[i..];
                let rest = rest
                    .strip_prefix(b"/")
                    .or_else(|| rest.strip_prefix(b"\\"))
                    .unwrap_or(rest);
                if rest.starts_with(b"..") {
                    return true;
                }
            }
            prev = c;
            run = 1;
        }
    }
    false
}

/// Non-ASCII characters the rules look for (replacement character, Unicode dots and slashes).
const UNICODE_TRIGGERS: [char; 13] = [
    '\u{FFFD}', '\u{FF0E}', '\u{2024}', '\u{2025}', '\u{2026}', '\u{FE52}', '\u{3002}', '\u{FF0F}',
    '\u{2215}', '\u{2216}', '\u{FF3C}', '\u{29F5}', '\u{2044}',
];

fn has_trigger(s: &str) -> bool {
    s.bytes()
        .any(|b| matches!(b, b'.' | b'/' | b'\\' | b'%' | b'\0' | b':'))
        || s.starts_with('L')
        || s.contains("0x")
        || (!s.is_ascii() && s.contains(UNICODE_TRIGGERS))
}

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = views.get(View::Raw);
    if !has_trigger(raw) {
        return;
    }
    let mut seen = 0u64;
    if raw.contains('%') {
        RAW.scan(raw, |r, m| {
            push_once(RULES, r, &mut seen, paranoia, t, View::Raw, m, out)
        });
    }
    let mut b64 = [0u8; 384];
    if let Some(text) = base64_path(raw, &mut b64) {
        let mut hit = false;
        PATH.scan(text, |r, _| hit |= matches!(r, 0 | 1 | 3 | 4 | 8 | 11));
        if hit || text.contains("../") {
            push_once(RULES, 14, &mut seen, paranoia, t, View::Raw, text, out);
        }
    }
    if raw.len() >= 128 && raw.contains("..") && raw.contains(['/', '\\']) && has_padding_run(raw) {
        let at = raw.find("..").unwrap_or(0);
        let frag = raw
            .get(at.saturating_sub(8)..(at + 16).min(raw.len()))
            .unwrap_or("..");
        push_once(RULES, 15, &mut seen, paranoia, t, View::Raw, frag, out);
    }
    let raw = views.get(View::Raw);
    // One or two NULs truncate a name; many are UTF-16 text read as UTF-8.
    if let Some(i) = nul_at(raw).filter(|_| raw.bytes().filter(|&b| b == 0).count() <= 2) {
        let rest = &raw[i..];
        let before = &raw[..i];
        let trunc = before.contains(['/', '\\', '.']) || rest.contains('.');
        let idx = if trunc { 7 } else { 6 };
        let frag_end = (i + 16).min(raw.len());
        let frag = raw.get(i.saturating_sub(16)..frag_end).unwrap_or(rest);
        push_once(RULES, idx, &mut seen, paranoia, t, View::Raw, frag, out);
    }
    let decoded = views.get(View::Decoded);
    let (path_lits, decoded_lits) = LITS.groups(decoded, PATH_LITS.len());
    if path_lits {
        let path = views.get(View::Path);
        PATH.scan(path, |r, m| {
            push_once(RULES, r, &mut seen, paranoia, t, View::Path, m, out)
        });
    }
    let decoded = views.get(View::Decoded);
    if decoded_lits {
        DECODED.scan(decoded, |r, m| {
            // 63: dots and separators mixed with replacement characters (overlong UTF-8 the
            // decoder could not map); a plain ../../ is rule 1400's.
            let r = match r {
                63 if m.contains('\u{FFFD}') => 2,
                63 => return,
                r => r,
            };
            push_once(RULES, r, &mut seen, paranoia, t, View::Decoded, m, out)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &str, pl: u8) -> Vec<u32> {
        crate::detect::testing::ids(inspect, v, pl)
    }

    fn blocked(v: &str) -> bool {
        crate::detect::testing::score(inspect, v) >= 5
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(PATH.failed, 0);
        assert_eq!(DECODED.failed, 0);
        assert_eq!(RAW.failed, 0);
        assert!(LITS.built());
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((1400..1500).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn attacks() {
        for v in [
            "../../etc/passwd",
            "..\\..\\windows\\win.ini",
            "/etc/shadow",
            "/proc/self/environ",
            "....//....//etc/passwd",
            "/..%c0%af../",
            "%c0%ae%c0%ae/%c0%ae%c0%ae/",
            "/0x2e0x2e/0x2e0x2e/x",
            "php://filter/convert.base64-encode/resource=index.php",
            "expect://id",
            "phar://uploads/x.jpg/shell",
            "../config.php\0.jpg",
            "c:/boot.ini",
            "/home/bob/.ssh/id_rsa",
            "..;/admin",
            "/...../...../x",
            "/var/log/apache2/access.log",
            "/.bash_history",
            "../../WEB-INF/web.xml",
            "/WEB-INF/web.xml",
            "/./././../x",
            "....web-inf/web.xml",
            "/\u{FFFD}.\u{FFFD}./etc",
            "/.\\/\\.\\.\\/x",
            "\\\u{2026}..\\\\\u{2026}..\\",
            "/etc/apt/sources.list",
            "Li4vLi4vLi4vZXRjL3Bhc3N3ZA==",
            "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "..%252f..%252fetc%252fpasswd",
            "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
            "..%u2215..%u2215etc%u2215passwd",
            "\u{FF0E}\u{FF0E}/\u{FF0E}\u{FF0E}/etc/passwd",
            "L2V0Yy9wYXNzd2Q=",
        ] {
            assert!(blocked(v), "not blocked: {v:?} -> {:?}", ids(v, 1));
        }
    }

    #[test]
    fn benign() {
        for v in [
            "wait...",
            "...",
            "and so on... really",
            "https://example.com/a/b.html",
            "report.final.v2.pdf",
            "1.5",
            "c/ caridad s/n",
            "data:image/png;base64,iVBORw0KGgo=",
            "etc. etc.",
            "config.json",
        ] {
            assert!(!blocked(v), "blocked: {v:?} -> {:?}", ids(v, 1));
        }
    }
}
