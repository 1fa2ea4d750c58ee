//! SQL injection.
//!
//! Two layers:
//!
//! * **libinjection's SQL tokenizer** (rule 1100) on the decoded value: it tokenizes the value
//!   as if it were injected into a SQL statement (bare, after a single quote, after a double
//!   quote), folds the tokens and compares the fingerprint with a table of known injection
//!   shapes. It catches the long tail of hand-written injections. Some of its fingerprints
//!   also fire on ordinary text and code (a lone string or number with one operator or
//!   comment: `"NOT" STUFFER`, `1,1--`; a value starting with a bare word:
//!   `behavior or performance (positive or negative)`; a lone call: `char(10)`; keywords
//!   without any SQL syntax character: `select x from y where`), so those count as a weaker
//!   rule (1101, paranoia 2). A panic of the tokenizer (the port is young) is caught and
//!   reported as rule 1199, critical: fail closed.
//! * **technique patterns** (rules 1110–1169) on the canonical view (entities decoded, Unicode
//!   folded, lowercase, whitespace compressed) or the SQL view (the same with comments turned
//!   into spaces, so `UNION/**/SELECT` is `union select`). Paranoia 1 patterns describe
//!   injection techniques that benign text does not contain (`union select`, a boolean
//!   operator followed by a literal comparison, stacked statements, time-delay and
//!   error-based functions, system catalogs, file access, dangerous stored procedures, a
//!   one-word value closed by a quote and a comment, a number ORed with an always-true
//!   operand);
//!   paranoia 2–4 progressively accept SQL keywords next to quote or comment characters,
//!   then lone quotes with keywords, then any SQL meta character.
//!
//! A value without any SQL meta character and without any SQL keyword, that does not start
//! with a number and OR/XOR, is dismissed after one byte scan and one Aho–Corasick pass over
//! the raw value; one whose only such characters may be encoded (`%`, `&`, non-ASCII) is
//! scanned again in its canonical form.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::model::{Class, Finding, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Sqli,
        severity,
        paranoia,
        description,
    }
}

use Severity::{Critical, Error, Warning};

const R_LIBINJECTION: Rule = rule(
    1100,
    Critical,
    1,
    "SQL injection syntax recognised by the libinjection SQL tokenizer",
);
const R_LIBINJECTION_WEAK: Rule = rule(
    1101,
    Critical,
    2,
    "SQL injection syntax recognised by the libinjection SQL tokenizer, in a fingerprint shape prose and code also produce",
);
const R_UNION: Rule = rule(
    1110,
    Critical,
    1,
    "UNION-based SQL injection: UNION [ALL|DISTINCT] SELECT appending a query",
);
const R_TAUTOLOGY: Rule = rule(
    1111,
    Critical,
    1,
    "SQL tautology or boolean probe: a boolean operator followed by a literal comparison (' OR 'a'='a, OR 1=1, AND 1=2)",
);
const R_STACKED: Rule = rule(
    1112,
    Critical,
    1,
    "Stacked SQL query: a statement separator followed by a new statement (; DROP TABLE, ; EXEC, ; SHUTDOWN)",
);
const R_TIME: Rule = rule(
    1113,
    Critical,
    1,
    "Time-based blind SQL injection: delay or heavy functions (SLEEP, BENCHMARK, PG_SLEEP, WAITFOR DELAY, DBMS_PIPE.RECEIVE_MESSAGE)",
);
const R_ERROR: Rule = rule(
    1114,
    Critical,
    1,
    "Error-based SQL injection: functions that leak data through error messages (EXTRACTVALUE, UPDATEXML, FLOOR(RAND()), CONVERT(INT, …))",
);
const R_CATALOG: Rule = rule(
    1115,
    Critical,
    1,
    "SQL system catalog access (information_schema, sysobjects, pg_catalog, sqlite_master, all_tables …)",
);
const R_FILE: Rule = rule(
    1116,
    Critical,
    1,
    "SQL file access: LOAD_FILE, INTO OUTFILE/DUMPFILE, LOAD DATA INFILE, UTL_FILE, pg_read_file, BACKUP … TO DISK",
);
const R_PROCEDURE: Rule = rule(
    1117,
    Critical,
    1,
    "Dangerous database procedures: OS command execution, registry, out-of-band network access (xp_cmdshell, sp_oacreate, OPENROWSET, UTL_HTTP)",
);
const R_VERSION_COMMENT: Rule = rule(
    1118,
    Critical,
    1,
    "MySQL executable comment (/*! … */) hiding SQL from filters",
);
const R_CONDITIONAL: Rule = rule(
    1119,
    Critical,
    1,
    "SQL conditional probe: IF/IIF/ELT/CASE WHEN on a literal comparison (boolean and time-based blind injection)",
);
const R_BLIND_FUNCTION: Rule = rule(
    1120,
    Critical,
    1,
    "Boolean-blind SQL injection: a quote or number followed by AND/OR and a SQL function or subquery (AND ASCII(SUBSTRING(…)), OR (SELECT …))",
);
const R_SELECT_SHAPE: Rule = rule(
    1121,
    Critical,
    1,
    "SQL SELECT of SQL-only expressions or a subquery after an operator (SELECT * FROM, SELECT @@version, =(SELECT …))",
);
const R_SYSVAR: Rule = rule(
    1122,
    Critical,
    1,
    "SQL server fingerprinting through system variables (@@version, @@datadir, @@hostname …)",
);
const R_STRING_BUILD: Rule = rule(
    1123,
    Critical,
    1,
    "SQL string building to evade filters: chained CHAR()/CHR() codes, CONCAT of hex or subqueries, a string breakout concatenated (||) with a call or subquery",
);
const R_COLUMN_PROBE: Rule = rule(
    1124,
    Critical,
    1,
    "SQL column-count probing: ORDER BY/GROUP BY a column number ending the injected query, PROCEDURE ANALYSE",
);
const R_DYNAMIC: Rule = rule(
    1125,
    Critical,
    1,
    "Dynamic SQL execution: EXEC(@…), EXECUTE IMMEDIATE, DECLARE @variable of a string type",
);
const R_BREAKOUT_END: Rule = rule(
    1126,
    Critical,
    1,
    "SQL quote breakout ending in a boolean literal and a comment or the end of the value (' OR 1--, \" OR TRUE#)",
);
const R_BREAKOUT_REOPEN: Rule = rule(
    1127,
    Critical,
    1,
    "SQL string breakout and reopen around an operator, MySQL implicit type conversion (x' OR 'y, x'='y, '-', a'|3!='4, admin'or'1)",
);
const R_QUOTE_COMMENT_LOGIN: Rule = rule(
    1128,
    Critical,
    1,
    "SQL login bypass: a value of one word closed by a single quote and a comment that cuts off the rest of the query (admin'--, admin'#, admin')-- -, admin';/*)",
);
const R_NUMERIC_TAUTOLOGY: Rule = rule(
    1129,
    Critical,
    1,
    "Numeric-context SQL tautology: a number OR/XOR/|| 1, TRUE, NOT a literal or the same number ending the value, or a number or name before a comment or LIMIT/ORDER BY (0 or 1, 1 || 1, 2 or 2, -1 or 1 limit 1, 1 or id--)",
);
const R_QUOTE_COMMENT: Rule = rule(
    1140,
    Critical,
    2,
    "SQL quote breakout followed by a comment that cuts off the rest of the query ('--, '#, '/*)",
);
const R_QUOTE_KEYWORD: Rule = rule(
    1141,
    Critical,
    2,
    "SQL quote breakout followed by a SQL operator or keyword (' OR, \" UNION, '; …)",
);
const R_FUNCTION_CALL: Rule = rule(
    1142,
    Warning,
    2,
    "SQL function call (CONCAT(, CHAR(, SUBSTRING(, CAST(, IF( …)",
);
const R_STATEMENT: Rule = rule(
    1143,
    Critical,
    2,
    "SQL statement shape (SELECT … FROM, INSERT INTO … VALUES, UPDATE … SET, DELETE FROM, DROP TABLE)",
);
const R_SQL_LITERALS: Rule = rule(
    1144,
    Warning,
    2,
    "SQL-specific tokens: @@variables, FROM DUAL, hex literals in comparisons, SQL comment after a number",
);
const R_QUOTE_ANY_KEYWORD: Rule = rule(
    1150,
    Critical,
    3,
    "Quote character together with a SQL keyword anywhere in the value",
);
const R_COMMENT_ANY: Rule = rule(
    1151,
    Error,
    3,
    "SQL comment sequence (--, /*, */, #) in the value",
);
const R_META: Rule = rule(
    1160,
    Warning,
    4,
    "SQL meta character (quote, backtick, semicolon, comment) in the value",
);
const R_META_MANY: Rule = rule(
    1161,
    Critical,
    4,
    "Several SQL meta characters (quotes, backticks, semicolons, comments, parentheses, equals signs) in one value",
);
const R_TOKENIZER_FAILED: Rule = rule(
    1199,
    Critical,
    1,
    "SQL tokenizer failed on this value (fail closed: a value the tokenizer cannot inspect is treated as an attack)",
);

/// The SQL injection rule catalogue.
pub static RULES: &[Rule] = &[
    R_LIBINJECTION,
    R_LIBINJECTION_WEAK,
    R_UNION,
    R_TAUTOLOGY,
    R_STACKED,
    R_TIME,
    R_ERROR,
    R_CATALOG,
    R_FILE,
    R_PROCEDURE,
    R_VERSION_COMMENT,
    R_CONDITIONAL,
    R_BLIND_FUNCTION,
    R_SELECT_SHAPE,
    R_SYSVAR,
    R_STRING_BUILD,
    R_COLUMN_PROBE,
    R_DYNAMIC,
    R_BREAKOUT_END,
    R_BREAKOUT_REOPEN,
    R_QUOTE_COMMENT_LOGIN,
    R_NUMERIC_TAUTOLOGY,
    R_QUOTE_COMMENT,
    R_QUOTE_KEYWORD,
    R_FUNCTION_CALL,
    R_STATEMENT,
    R_SQL_LITERALS,
    R_QUOTE_ANY_KEYWORD,
    R_COMMENT_ANY,
    R_META,
    R_META_MANY,
    R_TOKENIZER_FAILED,
];

// Regex building blocks (all patterns run on lowercase views).
//
// KB: start of a keyword: not preceded by a letter or `_` (a digit may precede: MySQL reads
//     `1union` as `1 union`).
// PRE: the end of the value an injection breaks out of: a quote, a closing parenthesis, a
//      number, or the start of the value; then optional spaces/closing parentheses.
// LIT: a SQL literal.
// CMP: a comparison and the start of its right-hand operand (a literal, a variable, a
//      function call or a subquery).
// BOOL: a boolean connective.
macro_rules! kb {
    () => {
        r"(?:^|[^a-z_])"
    };
}
macro_rules! pre {
    () => {
        r#"(?:^|['"`)\d])[\s+)]*"#
    };
}
macro_rules! lit {
    () => {
        r#"(?:'[^']*'|"[^"]*"|-?\d+(?:\.\d+)?|0x[0-9a-f]+|true\b|false\b|null\b)"#
    };
}
macro_rules! cmp {
    () => {
        r#"(?:(?:<=>|<>|!=|>=|<=|=|>|<|(?:not[\s+]+)?(?:like|rlike|regexp|sounds[\s+]+like|glob)\b)[\s+(~!-]*(?:n?'|"|\d|0x|true\b|false\b|null\b|@|select\b|[a-z_][\w.]*[\s+]*\()|(?:not[\s+]+)?between[\s+(]+(?:-?\d+|'[^']*'|"[^"]*"|0x[0-9a-f]+)[\s+)]*and[\s+(]+(?:-?\d|'|")|is[\s+]+(?:not[\s+]+)?(?:null|true|false)\b|(?:not[\s+]+)?in[\s+]*\()"#
    };
}
macro_rules! numx {
    () => {
        r"\(*[\s+]*-?\d+(?:\.\d+)?[\s+]*\)*(?:[\s+]*[-+*/%][\s+]*\(*[\s+]*-?\d+(?:\.\d+)?[\s+]*\)*)*"
    };
}
macro_rules! opchar {
    () => {
        r"[-+*/%&|^~!=<>]"
    };
}
macro_rules! bool_op {
    () => {
        r"(?:(?:or|xor|and|having|where)\b|\|\||&&)"
    };
}

/// One technique pattern: the rule it belongs to, the view it runs on, the regex.
struct Pattern {
    rule: &'static Rule,
    view: View,
    regex: &'static str,
}

const fn p(rule: &'static Rule, view: View, regex: &'static str) -> Pattern {
    Pattern { rule, view, regex }
}

use View::{Canonical as C, Sql as S};

/// Every technique pattern. Order does not matter; several patterns may share a rule (one
/// finding per rule).
static PATTERNS: &[Pattern] = &[
    // --- paranoia 1 ---------------------------------------------------------------------
    p(
        &R_UNION,
        S,
        concat!(
            kb!(),
            r"union[\s+(]+(?:(?:all|distinct(?:row)?)[\s+(]+)?(?:\d{5}[\s+]*)?select\b[\s+]*(?:\*|null\b|distinct\b|all\b|top\b|\d|0x|[@'`(-]|",
            r#"""#,
            r"|[a-z_][\w.$]*[\s+]*(?:\(|,|from\b|\|\||--|#|;|/\*|\)|\+))"
        ),
    ),
    p(
        &R_UNION,
        S,
        concat!(
            pre!(),
            r"union[\s+(]+(?:(?:all|distinct(?:row)?)[\s+(]+)?select[\s+]*$"
        ),
    ),
    p(
        &R_TAUTOLOGY,
        S,
        concat!(
            kb!(),
            r"(?:or|xor|and|having|where)[\s+(]*(?:not[\s+(]+)?(?:'[^']*'|",
            r#""[^"]*"|"#,
            numx!(),
            r")[\s+)]*(?:<=>|<>|!=|>=|<=|=|>|<)[\s+(]*(?:'|",
            r#""|"#,
            numx!(),
            r")"
        ),
    ),
    p(
        &R_TAUTOLOGY,
        S,
        concat!(
            pre!(),
            bool_op!(),
            r"[\s+(]*(?:not[\s+(]+)?",
            lit!(),
            r"[\s+)]*",
            cmp!()
        ),
    ),
    p(
        &R_TAUTOLOGY,
        S,
        concat!(
            r"'[\s+)]*(?:(?:or|xor|and)\b|\|\||&&)[\s+(]*(?:not[\s+(]+)?[a-z_][\w.]*[\s+)]*",
            cmp!()
        ),
    ),
    p(
        &R_STACKED,
        S,
        concat!(
            r";[\s+]*(?:",
            r"drop[\s+]+(?:table|database|schema|view|index|procedure|function|user|trigger|login)\b",
            r"|(?:insert|replace)[\s+]+(?:into|ignore)\b",
            r"|delete[\s+]+from\b",
            r#"|update[\s+]+[\w.\[\]"`]+[\s+]+set\b"#,
            r"|truncate[\s+]+table\b",
            r"|alter[\s+]+(?:table|database|user|login|system|session|server)\b",
            r"|create[\s+]+(?:table|database|user|login|procedure|function|trigger|or[\s+]+replace|temporary|view)\b",
            r"|exec(?:ute)?[\s+(]+(?:master\.|xp_|sp_|@|\(|immediate\b|'|char\b)",
            r"|declare[\s+]+@",
            r"|waitfor[\s+]+(?:delay|time)\b",
            r"|(?:set|select)[\s+]+@",
            r"|grant[\s+]+(?:all|select|insert|update|delete|execute|dba|connect)\b",
            r"|shutdown[\s+]*(?:with\b|--|#|;|$)",
            r")"
        ),
    ),
    p(
        &R_STACKED,
        S,
        r#"(?:^|['"`)\d])[\s+]*;[\s+]*(?:select[\s+(]+(?:\*|@@|null\b|case\b|if\b|[a-z_][\w.$]*[\s+]*\(|\d+[\s+]*(?:,|from\b|--|#|;|$|\)))|shutdown\b|kill[\s+]+\d|call[\s+]+[\w.]+[\s+]*\(|begin[\s+]+(?:declare|dbms_|execute)|if[\s+(]+(?:\d|select\b|exists\b|@)|drop[\s+]+\w+[\s+]*(?:--|#|;|$)|while[\s+(]+|(?:begin[\s+]+)?shutdown\b|do[\s+]*\()"#,
    ),
    p(
        &R_TIME,
        S,
        r"(?:^|['\x22(,=+|&*/<>-]|(?:^|[^a-z_])(?:and|or|xor|not|select|if|then|else|when|union|return|by))[\s+(]*sleep[\s+]*\([\s+]*(?:\d+(?:\.\d+)?[\s+]*\)|[@(]|if\b|case\b|select\b|\d+[\s+]*[-+*/])",
    ),
    p(
        &R_TIME,
        S,
        concat!(
            kb!(),
            r"(?:pg_sleep(?:_for|_until)?[\s+]*\(",
            r"|benchmark[\s+]*\([\s+]*[\d(][^,]*,",
            r"|waitfor[\s+]+(?:delay|time)[\s+]*['\d(@]",
            r"|dbms_pipe\.receive_message[\s+]*\(",
            r"|dbms_lock\.sleep[\s+]*\(",
            r"|dbms_session\.sleep[\s+]*\(",
            r"|randomblob[\s+]*\([\s+]*\d",
            r"|generate_series[\s+]*\([\s+]*\d",
            r")"
        ),
    ),
    p(
        &R_ERROR,
        S,
        concat!(
            kb!(),
            r"(?:extractvalue|updatexml|name_const|gtid_subset|gtid_subtract|xmltype|ctxsys\.drithsx\.sn|dbms_xmlgen\.\w+|dbms_utility\.sqlid_to_sqlhash|st_latfromgeohash|st_longfromgeohash|st_pointfromgeohash|json_keys)[\s+]*\(",
            r"|",
            kb!(),
            r"(?:floor[\s+]*\([\s+]*rand[\s+]*\(|exp[\s+]*\([\s+]*~|convert[\s+]*\([\s+]*(?:int|integer|numeric)[\s+]*,|utl_inaddr\.get_host_(?:address|name)[\s+]*\()"
        ),
    ),
    p(
        &R_CATALOG,
        S,
        concat!(
            kb!(),
            r"(?:information_schema\b|performance_schema\b|mysql\.(?:user|db|tables_priv|columns_priv|proc|innodb_table_stats)\b",
            r"|sys\.(?:objects|tables|columns|databases|schemas|sysobjects|syscolumns|sql_logins|server_principals|user_summary|all_objects|syslogins)\b",
            r"|(?:master|tempdb|msdb|model)\.\.?(?:dbo\.)?sys\w+",
            r"|sys(?:objects|columns|databases|logins|processes|comments|filegroups|xlogins)\b",
            r"|pg_(?:catalog|shadow|user|tables|database|namespace|class|proc|roles|authid|stat_activity|group)\b",
            r"|(?:all|user|dba)_(?:tables|users|tab_columns|objects|views|role_privs|sys_privs|tab_privs|source)\b",
            r"|v\$(?:version|instance|database|session|parameter)\b",
            r"|sqlite_(?:master|schema|temp_master|version)\b",
            r"|sysibm\.\w+|syscat\.\w+|rdb\$\w+|msysobjects\b|msysaccessobjects\b)"
        ),
    ),
    p(
        &R_FILE,
        S,
        concat!(
            kb!(),
            r"(?:load_file[\s+]*\([\s+]*[^\s+)]|into[\s+]+(?:out|dump)file\b",
            r"|load[\s+]+data[\s+]+(?:(?:low_priority|concurrent)[\s+]+)?(?:local[\s+]+)?infile\b",
            r"|utl_file\.\w+|pg_read_(?:binary_)?file[\s+]*\(|pg_ls_dir[\s+]*\(|lo_(?:import|export)[\s+]*\(",
            r"|copy[\s+]+\(?[\w.]+\)?[\s+]+(?:from|to)[\s+]+(?:program\b|'[/\\])",
            r"|backup[\s+]+(?:database|log)[\s+]+\S+[\s+]+to[\s+]+disk)"
        ),
    ),
    p(
        &R_PROCEDURE,
        C,
        concat!(
            kb!(),
            r"(?:xp_(?:cmdshell|regread|regwrite|regdeletekey|regdeletevalue|regenumvalues|dirtree|fileexist|subdirs|servicecontrol|availablemedia|terminate_process|makecab|ntsec_enumdomains|loginconfig|enumgroups|getnetname|msver)",
            r"|sp_(?:oacreate|oamethod|oagetproperty|makewebtask|addextendedproc|configure|password|addlogin|addsrvrolemember|executesql|execute_external_script|start_job|add_job|adduser|droplogin|grantlogin|dropextendedproc|replwritetovarbin|helpextendedproc)",
            r"|openrowset|opendatasource|openquery|sys_eval|sys_exec|dbms_java\.\w+|dbms_scheduler\.\w+|utl_http\.\w+|utl_tcp\.\w+|utl_smtp\.\w+|httpuritype|dbms_ldap\.\w+|dbms_xdb\.\w+)\b"
        ),
    ),
    p(
        &R_VERSION_COMMENT,
        C,
        r"/\*!(?:\d{5}|[\s+]*(?:select|union|and|or|xor|not|from|where|having|order|group|limit|insert|update|delete|drop|sleep|benchmark|concat|char|all|distinct|if|case|null|\d|@@|0x)\b)",
    ),
    p(
        &R_CONDITIONAL,
        S,
        concat!(
            kb!(),
            r"(?:if|iif|elt|make_set|nullif|case[\s+]+when)[\s+(]+",
            lit!(),
            r"[\s+)]*(?:<=>|<>|!=|>=|<=|=|>|<|like\b)[\s+(]*",
            lit!()
        ),
    ),
    p(
        &R_CONDITIONAL,
        S,
        concat!(
            kb!(),
            r"case[\s+(]+(?:",
            lit!(),
            r"[\s+)]*)?when[\s+(]+",
            lit!(),
            r"[\s+)]*then\b"
        ),
    ),
    p(
        &R_BLIND_FUNCTION,
        S,
        concat!(
            pre!(),
            bool_op!(),
            r"[\s+]*(?:not[\s+]*)?\(*[\s+]*(?:",
            r"(?:ascii|ord|substring|substr|mid|length|char_length|len|hex|unhex|bin|conv|elt|make_set|ifnull|isnull|nullif|coalesce|exists|sleep|benchmark|if|iif|row|char|chr|concat|concat_ws|group_concat|user|database|schema|version|current_user|system_user|session_user|db_name|user_name|is_srvrolemember|has_dbaccess|unicode|instr|locate|rand|floor|cast|convert|extractvalue|updatexml|regexp_substring|crc32|md5|sha1|utl_inaddr\.\w+|dbms_\w+\.\w+)\((?:[\s+]*[^\s+)]|\)[\s+]*(?:[=<>!]|(?:like|rlike|regexp|in|is)\b))",
            r"|select[\s+(]+(?:\*|@|\d|null\b|case\b|[a-z_][\w.]*[\s+]*(?:\(|,|from\b))",
            r")"
        ),
    ),
    p(
        &R_SELECT_SHAPE,
        S,
        concat!(
            kb!(),
            r"select[\s+(]+(?:top[\s+]+\d+[\s+]+)?(?:\*[\s+]*from\b|@@\w|",
            r"(?:user|database|schema|version|current_user|system_user|session_user|db_name|user_name|host_name|load_file|sleep|pg_sleep|benchmark|concat|concat_ws|group_concat|count|char|chr|ascii|substr|substring|hex|unhex|md5|sha1|name_const|extractvalue|updatexml|if|iif|elt|case)[\s+]*\(",
            r"|null[\s+]*(?:,|from\b|--|#|$)|\d+[\s+]*,[\s+]*\d+[\s+]*(?:,|from\b|--|#|$)|0x[0-9a-f]{2,}|case[\s+]+when\b",
            r"|(?:current_user|session_user|system_user|current_database|current_schema)\b[\s+]*(?:;|,|--|#|$|from\b))"
        ),
    ),
    p(
        &R_SELECT_SHAPE,
        S,
        r"(?:[=<>,+|*/&-]|(?:^|[^a-z_])(?:like|rlike|regexp|exists|not))[\s+]*\([\s+(]*select\b",
    ),
    p(
        &R_SYSVAR,
        S,
        r"@@(?:version|datadir|hostname|basedir|servername|servicename|language|spid|identity|tmpdir|global\.|session\.|version_compile_os|version_comment|plugin_dir|secure_file_priv|innodb_\w+|log_error|port|character_set_\w+|collation_\w+|sql_mode|max_allowed_packet|lc_time_names|connections|cpu_busy|rowcount|error|microsoftversion|options|textsize|dbts|procid|remserver|nestlevel|trancount|lock_timeout|max_connections)\b",
    ),
    p(
        &R_STRING_BUILD,
        S,
        concat!(
            kb!(),
            r"(?:char|chr|nchar)[\s+]*\([\s+]*\d+[\s+]*\)[\s+]*(?:\|\||\+|,|&)[\s+]*(?:char|chr|nchar)[\s+]*\(",
            r"|",
            kb!(),
            r"char[\s+]*\([\s+]*\d+(?:[\s+]*,[\s+]*\d+){2,}[\s+]*\)",
            r"|",
            kb!(),
            r"(?:concat|concat_ws|group_concat)[\s+]*\([^)]*?(?:0x[0-9a-f]{2,}|char[\s+]*\(|chr[\s+]*\(|@@|select\b|user[\s+]*\(|version[\s+]*\(|database[\s+]*\()",
            r"|'[\s+]*\|\|[\s+]*\(?[\s+]*(?:select\b|[a-z_][\w.$]*[\s+]*\()"
        ),
    ),
    p(
        &R_COLUMN_PROBE,
        C,
        concat!(
            pre!(),
            r"(?:order|group)[\s+]+by[\s+]+\d+(?:[\s+]*,[\s+]*\d+)*[\s+]*(?:asc|desc)?[\s+]*(?:--|#|/\*|;|$|%00)"
        ),
    ),
    p(
        &R_COLUMN_PROBE,
        S,
        concat!(kb!(), r"procedure[\s+]+analyse[\s+]*\("),
    ),
    p(
        &R_COLUMN_PROBE,
        C,
        concat!(
            pre!(),
            r"limit[\s+]+\d+(?:[\s+]*,[\s+]*\d+)?[\s+]*(?:--|#|/\*|;)"
        ),
    ),
    p(
        &R_DYNAMIC,
        S,
        concat!(
            kb!(),
            // `EXEC @sql` runs a variable; `npm exec @scope/package` is a command line.
            r"(?:exec(?:ute)?[\s+]*\([\s+]*(?:@|'|char[\s+]*\(|0x)|execute[\s+]+immediate[\s+]+['(]|exec(?:ute)?[\s+]+(?:master\.|xp_|sp_|@\w+(?:$|[^\w/]))",
            r"|declare[\s+]+@\w+[\s+]+(?:n?varchar|varbinary|n?char|int|sysname|table|cursor|binary)\b)"
        ),
    ),
    p(
        &R_BREAKOUT_END,
        C,
        concat!(
            r#"['"][\s+)]*(?:"#,
            bool_op!(),
            r"|(?:like|rlike|regexp|div|mod)\b)[\s+(]*(?:not[\s+(]+)?(?:-?\d+|true|false|null)\b[\s+)]*(?:--|#|/\*|;|$|%00)"
        ),
    ),
    // The whole value is one word (a user name, an e-mail address, an id) that a single
    // quote closes, then a comment: `admin'--`, `admin' #`, `admin')-- -`, `admin';/*`. A
    // MySQL `--` comment needs a space (or a control character) after it; `+` is a space a
    // client encoded, `-` the usual filler (`-- -`). Double quotes are left to rule 1140
    // (paranoia 2): inch marks in product text (`7" #2 NEEDLE`) take that shape.
    p(
        &R_QUOTE_COMMENT_LOGIN,
        C,
        r"^[\s+]*[\w.@$\x80-\xff-]+'[\s+);]*(?:--(?:[\s+-]|$)|#|/\*)",
    ),
    // A numeric parameter (`WHERE id=$v`) made true for every row: the whole value is a
    // number, OR/XOR/|| and an operand that is always true (`0 or 1`, `1 || 1`,
    // `-1 or 1 limit 1`, `1 or not 0`), ending the value (comments removed: SQL view) or
    // followed by LIMIT/ORDER BY. Any other right operand (`1 or 2`, `10 or less`,
    // `1950 or 1960`: answers in forms) counts only when a comment ending the value or a
    // LIMIT/ORDER BY follows it (`1 or id-- -`, `-1 or 2 limit 1`): see the next pattern;
    // or when it is the left operand again (`2 or 2`): see [`NUMERIC_PAIR`], checked in code.
    p(
        &R_NUMERIC_TAUTOLOGY,
        S,
        r"^[\s+(]*-?\d+[\s+)]*(?:\|\||(?:or|xor)\b)[\s+(]*(?:1|true|not[\s+(]*(?:-?\d+|true|false|null))[\s+)]*(?:$|;|limit[\s+]+\d|order[\s+]+by\b)",
    ),
    p(
        &R_NUMERIC_TAUTOLOGY,
        C,
        r"^[\s+(]*-?\d+[\s+)]*(?:\|\||(?:or|xor)\b)[\s+(]*(?:-?\d+|[a-z_][\w.]*)[\s+)]*(?:(?:--|#)[\s+-]*$|/\*|limit[\s+]+\d|order[\s+]+by\b)",
    ),
    // --- paranoia 2 ---------------------------------------------------------------------
    p(&R_QUOTE_COMMENT, C, r#"['"][\s+)]*(?:--|#|/\*)"#),
    p(
        &R_QUOTE_KEYWORD,
        S,
        concat!(
            r#"['"]"#,
            r"[\s+)]*(?:;|\|\||&&|(?:or|and|xor|union|select|having|order[\s+]+by|group[\s+]+by|like|rlike|regexp|sounds[\s+]+like|div|waitfor|procedure|limit|into|where|exec|execute)\b)"
        ),
    ),
    p(
        &R_FUNCTION_CALL,
        S,
        r"(?:^|[^a-z_.])(?:ascii|char|chr|nchar|concat|concat_ws|group_concat|substr|substring|mid|hex|unhex|cast|convert|if|iif|ifnull|isnull|nullif|coalesce|version|database|current_user|system_user|session_user|db_name|user_name|sleep|md5|sha1|rand|floor|length|char_length|ord|bin|conv|elt|make_set|instr|locate|exists|load_file|benchmark|unicode)[\s+]*\(",
    ),
    p(
        &R_STATEMENT,
        S,
        concat!(
            kb!(),
            r"(?:select\b[^;]*?\bfrom[\s+]+[\w.$\[\]`]+|insert[\s+]+into\b[^;]*?\b(?:values|select)\b|update[\s+]+[\w.\[\]`]+[\s+]+set[\s+]+[\w.\[\]`]+[\s+]*=",
            r"|delete[\s+]+from[\s+]+[\w.\[\]`]+|drop[\s+]+(?:table|database|schema|view)[\s+]+[\w.\[\]`]+|truncate[\s+]+table\b)"
        ),
    ),
    p(
        &R_SQL_LITERALS,
        C,
        concat!(
            r"@@[a-z_]\w*|",
            kb!(),
            r"from[\s+]+dual\b|(?:[=<>(,]|(?:^|[^a-z_])(?:like|and|or|in))[\s+]*0x[0-9a-f]{4,}\b|\d[\s+]*\)*[\s+]*(?:--[\s+]*$|--[\s+]|#|/\*)"
        ),
    ),
    // --- paranoia 3 ---------------------------------------------------------------------
    p(
        &R_QUOTE_ANY_KEYWORD,
        S,
        concat!(
            r#"['"`].*?(?:^|[^a-z_])(?:or|and|xor|not|union|select|insert|update|delete|drop|from|where|having|like|exec|null|sleep|benchmark|waitfor|order[\s+]+by|group[\s+]+by)\b"#,
            r#"|(?:^|[^a-z_])(?:or|and|xor|not|union|select|insert|update|delete|drop|from|where|having|like|exec|null|sleep|benchmark|waitfor|order[\s+]+by|group[\s+]+by)\b.*?['"`]"#
        ),
    ),
    p(&R_COMMENT_ANY, C, r"--|/\*|\*/|#"),
    // --- paranoia 4 ---------------------------------------------------------------------
    p(&R_META, C, r#"['"`;]|--|/\*|\*/"#),
];

/// Rule 1127, after the quote that would close the application's string: an operator, a short
/// SQL expression (symbols, SQL keywords and at most one name), and a quote reopening a string
/// (`' AND 'b`, `'='`, `'|3!='4`, `' -1 or '1`). The single-quote form also takes word
/// operators; the double-quote form, where prose puts `"a" + "b"` and `"x" AND "y"`, takes only
/// comparison and bitwise operators. `$end` is what may follow the reopening quote.
macro_rules! reopen_single {
    ($end:literal) => {
        concat!(
            r"^'[\s+]*(?:",
            opchar!(),
            r"|(?:and|or|xor|div|mod|like|rlike|regexp|sounds|not|is|in)\b)",
            r"(?:(?:[^'a-z_]|\b(?:or|and|xor|is|not|null|like|rlike|regexp|div|mod|sounds|n)\b)*",
            r"(?:[a-z_][\w.]*)?",
            r"(?:[^'a-z_]|\b(?:or|and|xor|is|not|null|like|rlike|regexp|div|mod|sounds|n)\b)*",
            r"(?:",
            opchar!(),
            r"|\s|\b(?:and|or|xor|div|mod|like|rlike|regexp|is|not)))?[\s+]*'",
            $end
        )
    };
}
macro_rules! reopen_double {
    ($end:literal) => {
        concat!(
            r#"^"[\s+]*(?:<=>|<>|!=|>=|<=|=|<|>|&&|\|\||\^|\|)"#,
            r#"[-+*/%&|^~!=<>\s]*""#,
            $end
        )
    };
}
/// Rule 1127 patterns: [single, double] quote × [inside the value, at its very start]. At the
/// start (`'='`, `'-'`), the reopening quote must end the value or be followed by a symbol, as
/// a quoted symbol in prose (`'+' lines`) is followed by a word.
const REOPEN: [&str; 4] = [
    reopen_single!(r"(?:$|[^'])"),
    reopen_double!(r#"(?:$|[^"])"#),
    reopen_single!(r#"(?:$|[^a-z\s'"])"#),
    reopen_double!(r#"(?:$|[^a-z\s'"])"#),
];

/// Rule 1111 on names: a boolean operator and a comparison of two names, a tautology when both
/// are the same name (`' or a=a`, `or x like x`); [`same_operands`] checks that.
const NAME_COMPARISON: &str = r"(?:^|[^a-z_])(?:or|xor|and|having|where)[\s+(]+(?:not[\s+(]+)?[a-z_][\w.]*[\s+)]*(?:=|<=>|like\b)[\s+(]*[a-z_][\w.]*";

/// Whether a [`NAME_COMPARISON`] match compares a name with itself.
fn same_operands(matched: &[u8]) -> bool {
    let mut names = matched
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'))
        .filter(|w| {
            w.first()
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        })
        .rev();
    let rhs = names.next();
    let mut lhs = names.next();
    if lhs == Some(b"like".as_slice()) {
        lhs = names.next();
    }
    rhs.is_some() && rhs == lhs
}

/// Rule 1129 on two numbers: the whole value (comments removed: SQL view) is a number,
/// OR/XOR/|| and a number, then its end, `;` or LIMIT/ORDER BY. A tautology for every row
/// when the right operand is truthy, but `1 or 2` and `1950 or 1960` are also how people
/// answer a question, so only the same non-zero number on both sides counts (`2 or 2`,
/// `-5 || -5`, `(3) or (3)`, `07 or 7`): nobody offers a choice between a number and itself.
/// [`same_nonzero_numbers`] checks that.
const NUMERIC_PAIR: &str = r"^[\s+(]*(-?\d+)[\s+)]*(?:\|\||(?:or|xor)\b)[\s+(]*(-?\d+)[\s+)]*(?:$|;|limit[\s+]+\d|order[\s+]+by\b)";

/// An integer as written (`-?digits`) without its leading zeros (`007` is `7`): its sign and
/// digits, `None` for zero.
fn nonzero_integer(n: &[u8]) -> Option<(bool, &[u8])> {
    let (negative, n) = match n.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, n),
    };
    let digits = n.get(n.iter().take_while(|&&b| b == b'0').count()..)?;
    (!digits.is_empty()).then_some((negative, digits))
}

/// Whether a [`NUMERIC_PAIR`] match has the same non-zero number on both sides.
fn same_nonzero_numbers(caps: &regex::bytes::Captures<'_>) -> bool {
    match (caps.get(1), caps.get(2)) {
        (Some(a), Some(b)) => {
            nonzero_integer(a.as_bytes()).is_some_and(|a| nonzero_integer(b.as_bytes()) == Some(a))
        }
        _ => false,
    }
}

/// The compiled patterns of one view and paranoia tier (paranoia 1, or 2 and above).
struct ViewSet {
    view: View,
    /// The lowest paranoia at which any member runs.
    paranoia: u8,
    set: RegexSet,
    /// Per set member: the rule and the individual regex (to locate the matched fragment).
    members: Vec<(&'static Rule, Regex)>,
}

struct Compiled {
    sets: [ViewSet; 4],
    /// Raw-value keywords that make a value without meta characters worth inspecting.
    keywords: Option<AhoCorasick>,
    /// [`REOPEN_SINGLE`] and [`REOPEN_DOUBLE`].
    reopen: [Option<Regex>; 4],
    /// [`NAME_COMPARISON`].
    name_comparison: Option<Regex>,
    /// [`NUMERIC_PAIR`].
    numeric_pair: Option<Regex>,
}

/// Keywords (lowercase, matched ASCII-case-insensitively on the raw value) without which a
/// value free of SQL meta characters cannot match any rule.
///
/// A keyword counts only where it can be one: not preceded by a letter or `_` (the `kb!()`
/// boundary every pattern puts before these keywords; a digit may precede, as in `1union`),
/// and, for the whole words of [`WHOLE_WORDS`], not followed by a letter, digit or `_` (every
/// pattern that can match without a meta character needs a separator, `\b` or `$` after
/// them; libinjection reads `orders` or `nullable` as one bare word). So `/api/orders`,
/// `dropdown` or `individual` are dismissed. `sys` (`msysobjects`) and `0x` (`and0x41…`) match
/// anywhere; the other prefixes (`pg_`, `user_` …) and `exec` (`execute`) may be followed by
/// anything.
const KEYWORDS: &[&str] = &[
    "union",
    "select",
    "insert",
    "update",
    "delete",
    "drop",
    "like",
    "between",
    "regexp",
    "order",
    "group",
    "having",
    "procedure",
    "waitfor",
    "sleep",
    "benchmark",
    "information_schema",
    "performance_schema",
    "sys",
    "pg_",
    "xp_",
    "sp_",
    "outfile",
    "dumpfile",
    "infile",
    "dbms_",
    "utl_",
    "exec",
    "declare",
    "sqlite_",
    "mysql.",
    "rdb$",
    "v$",
    "all_",
    "user_",
    "dba_",
    "openrowset",
    "opendatasource",
    "openquery",
    "shutdown",
    "from",
    "dual",
    "null",
    "0x",
    "rlike",
    "glob",
    "case",
];

/// The [`KEYWORDS`] that count only as whole words (see there).
const WHOLE_WORDS: &[&str] = &[
    "union",
    "select",
    "insert",
    "update",
    "delete",
    "drop",
    "like",
    "between",
    "regexp",
    "order",
    "group",
    "having",
    "procedure",
    "waitfor",
    "sleep",
    "benchmark",
    "outfile",
    "dumpfile",
    "infile",
    "declare",
    "openrowset",
    "opendatasource",
    "openquery",
    "shutdown",
    "from",
    "dual",
    "null",
    "rlike",
    "glob",
    "case",
];

/// The [`KEYWORDS`] that count wherever they appear.
const ANYWHERE: &[&str] = &["sys", "0x"];

/// Whether `text` holds one of [`KEYWORDS`] where it can be a keyword.
fn has_keyword(ac: &AhoCorasick, text: &[u8]) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(m) = ac.find(aho_corasick::Input::new(text).span(from..text.len())) {
        let kw = KEYWORDS.get(m.pattern().as_usize()).copied().unwrap_or("");
        let before = m.start().checked_sub(1).and_then(|i| text.get(i)).copied();
        let after = text.get(m.end()).copied();
        let left_ok = ANYWHERE.contains(&kw)
            || before.is_none_or(|b| !(b.is_ascii_alphabetic() || b == b'_'));
        let right_ok = !WHOLE_WORDS.contains(&kw) || after.is_none_or(|b| !word(b));
        if left_ok && right_ok {
            return true;
        }
        // Keywords may overlap (`rlike` and `like`): look again one byte further.
        from = m.start() + 1;
    }
    false
}

/// What a byte scan says about a value before any decoding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// A character some rule needs: inspect.
    Meta,
    /// Only characters that decoding may turn into meta characters (`%`, `&`, non-ASCII,
    /// controls): look again at the canonical view.
    Encoded,
    /// Neither: only SQL keywords can make it suspicious.
    Plain,
}

/// Scans for the characters the rules of `paranoia` need. Paranoia 1–2 rules need quotes,
/// statement separators, parentheses, comparisons or comment and variable markers; paranoia
/// 3–4 rules also look at lone `#`, `*`, `!`, `~`, `^`, `{`.
fn scan(value: &[u8], paranoia: u8) -> Scan {
    let mut prev = 0u8;
    let mut encoded = false;
    for &b in value {
        match b {
            b'\'' | b'"' | b'`' | b';' | b'(' | b')' | b'=' | b'|' | b'<' | b'>' | b'\\' => {
                return Scan::Meta;
            }
            b'-' | b'@' | b'&' if prev == b => return Scan::Meta,
            b'*' if prev == b'/' => return Scan::Meta,
            b'#' if paranoia >= 2 => return Scan::Meta,
            b'*' | b'!' | b'~' | b'^' | b'{' if paranoia >= 3 => return Scan::Meta,
            b'%' | b'&' | 0x80..=0xff | 0x00..=0x1f | 0x7f => encoded = true,
            _ => {}
        }
        prev = b;
    }
    if encoded { Scan::Encoded } else { Scan::Plain }
}

/// Whether `text` starts the way a numeric-context boolean injection does (rule 1129): spaces or
/// `(`, an optional `-`, digits, spaces or `)`, then `or` or `xor` (ASCII case-insensitive). A
/// value free of meta characters and of [`KEYWORDS`] needs this to be inspected (`0 or 1`);
/// the rule's patterns decide.
fn starts_numeric_or(text: &[u8]) -> bool {
    let space = |b: &u8| b.is_ascii_whitespace() || *b == b'+';
    let mut rest = text;
    while let [b, tail @ ..] = rest {
        if !(space(b) || *b == b'(') {
            break;
        }
        rest = tail;
    }
    if let [b'-', tail @ ..] = rest {
        rest = tail;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    rest = rest.get(digits..).unwrap_or_default();
    while let [b, tail @ ..] = rest {
        if !(space(b) || *b == b')') {
            break;
        }
        rest = tail;
    }
    let starts = |w: &[u8]| {
        rest.get(..w.len())
            .is_some_and(|r| r.eq_ignore_ascii_case(w))
    };
    starts(b"or") || starts(b"xor")
}

/// Compiles a pattern (ASCII mode: the views are lowercase and whitespace-compressed, and
/// ASCII classes keep the automata small enough for the lazy DFA), or logs and skips it if it
/// does not compile: the test suite asserts every pattern compiles.
fn compile(pattern: &str) -> Option<Regex> {
    match RegexBuilder::new(pattern)
        .unicode(false)
        .dot_matches_new_line(true)
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(pattern, error = %e, "SQLi pattern does not compile; rule disabled");
            None
        }
    }
}

fn build_view_set(view: View, strict: bool) -> ViewSet {
    let mut members = Vec::new();
    let mut sources = Vec::new();
    for pat in PATTERNS
        .iter()
        .filter(|p| p.view == view && (p.rule.paranoia > 1) == strict)
    {
        if let Some(re) = compile(pat.regex) {
            members.push((pat.rule, re));
            sources.push(pat.regex);
        }
    }
    let set = match RegexSetBuilder::new(&sources)
        .unicode(false)
        .dot_matches_new_line(true)
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "SQLi pattern set does not compile; patterns disabled");
            members.clear();
            RegexSet::empty()
        }
    };
    ViewSet {
        view,
        paranoia: if strict { 2 } else { 1 },
        set,
        members,
    }
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let keywords = AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(KEYWORDS)
        .map_err(|e| {
            tracing::error!(error = %e, "SQLi keyword prefilter does not build; every value is inspected");
        })
        .ok();
    Compiled {
        sets: [
            build_view_set(View::Canonical, false),
            build_view_set(View::Sql, false),
            build_view_set(View::Canonical, true),
            build_view_set(View::Sql, true),
        ],
        keywords,
        reopen: REOPEN.map(compile),
        name_comparison: compile(NAME_COMPARISON),
        numeric_pair: compile(NUMERIC_PAIR),
    }
});

/// Forces pattern compilation (at start-up rather than on the first request).
pub fn warm_up() {
    LazyLock::force(&COMPILED);
    LazyLock::force(&PHRASE_STARTS);
}

/// The most bytes handed to the tokenizer. libinjection fingerprints the first five tokens
/// left after folding, and an injection starts where the value does, so what lies beyond this
/// rarely changes its answer (the technique patterns still see the whole value). The cap
/// bounds the cost of values that fold without end (`<a <a <a …`), which this port tokenizes
/// at about 1 µs per token: 2 KiB costs at most about 1.5 ms.
const TOKENIZER_MAX: usize = 2 * 1024;

/// What libinjection said about a value.
enum Tokenized {
    Clean,
    Injection([u8; 8]),
    Panicked,
}

fn tokenize(input: &[u8]) -> Tokenized {
    guarded(input, detect_sqli)
}

/// `libinjectionrs::detect_sqli`, returning the fingerprint of the context that matched.
///
/// The same passes as `SqliState::detect` (no quote context in ANSI mode, then MySQL mode if
/// the first pass saw a MySQL-style comment; then, for a value with a single quote, the same
/// after a single quote; then, with a double quote, after a double quote in MySQL mode), each
/// decided by `SqliState::is_sqli` (fingerprint, blacklist, whitelist) as `detect` does. It
/// saves the work `detect_sqli` spends after deciding: one more full tokenization and folding
/// of the value to produce the fingerprint it already had.
fn detect_sqli(input: &[u8]) -> Option<[u8; 8]> {
    if input.is_empty() {
        return None;
    }
    sqli_pass(input, Context::Bare).or_else(|| detect_sqli_quoted(input))
}

/// The quote-context passes of [`detect_sqli`] alone.
fn detect_sqli_quoted(input: &[u8]) -> Option<[u8; 8]> {
    if input.is_empty() {
        return None;
    }
    input
        .contains(&b'\'')
        .then(|| sqli_pass(input, Context::Single))
        .flatten()
        .or_else(|| {
            input
                .contains(&b'"')
                .then(|| sqli_pass(input, Context::Double))
                .flatten()
        })
}

/// Where libinjection imagines the value was injected.
#[derive(Clone, Copy)]
enum Context {
    /// Bare, ANSI then (after MySQL-style comments) MySQL.
    Bare,
    /// After a single quote, ANSI then (after MySQL-style comments) MySQL.
    Single,
    /// After a double quote, MySQL.
    Double,
}

/// One context of `SqliState::detect`: the fingerprint if it is an injection.
fn sqli_pass(input: &[u8], context: Context) -> Option<[u8; 8]> {
    use libinjectionrs::{SqliFlags, SqliState};
    let (quote, mysql_only) = match context {
        Context::Bare => (SqliFlags::FLAG_QUOTE_NONE, false),
        Context::Single => (SqliFlags::FLAG_QUOTE_SINGLE, false),
        Context::Double => (SqliFlags::FLAG_QUOTE_DOUBLE, true),
    };
    let dialect = if mysql_only {
        SqliFlags::FLAG_SQL_MYSQL
    } else {
        SqliFlags::FLAG_SQL_ANSI
    };
    let mut state = SqliState::new(input, quote | dialect);
    if state.is_sqli() {
        return Some(state.fingerprint);
    }
    if mysql_only || (state.stats_comment_ddx == 0 && state.stats_comment_hash == 0) {
        return None;
    }
    let mut state = SqliState::new(input, quote | SqliFlags::FLAG_SQL_MYSQL);
    state.is_sqli().then_some(state.fingerprint)
}

/// Runs a tokenizer on at most [`TOKENIZER_MAX`] bytes, turning a panic into a verdict.
fn guarded(input: &[u8], tokenizer: impl FnOnce(&[u8]) -> Option<[u8; 8]>) -> Tokenized {
    let input = input.get(..TOKENIZER_MAX).unwrap_or(input);
    match catch_unwind(AssertUnwindSafe(|| tokenizer(input))) {
        Ok(Some(fp)) => Tokenized::Injection(fp),
        Ok(None) => Tokenized::Clean,
        Err(_) => Tokenized::Panicked,
    }
}

fn fingerprint_str(fp: &[u8; 8]) -> &str {
    let len = fp.iter().position(|&b| b == 0).unwrap_or(fp.len());
    std::str::from_utf8(fp.get(..len).unwrap_or_default()).unwrap_or("")
}

/// Fingerprints libinjection also produces on plain text and code (`input` is what it
/// tokenized):
/// * at most three tokens made only of strings, numbers, bare words, operators, logic
///   operators, commas and comments (`"NOT" STUFFER`, `1,1--`, `80% AND 20%`), except a string
///   directly followed by a comment (`admin'--`: the comment cuts off the rest of the query);
/// * anything starting with a bare word: the value begins with an ordinary word, as prose does
///   (`behavior or performance (positive or negative)` is `n&nf(`); injections after a bare
///   word (a column name) are rare and the technique patterns still see them;
/// * a lone function call of one argument (`char(10)`, `sleep(well)`), or a value starting with
///   a call without arguments and comparing nothing (`mkdir() and rmdir()`, `rand() is`);
/// * `X` alone: the `/*!` marker, also the start of C and Rust doc comments (the MySQL
///   executable comment has its own rule, 1118, which requires SQL inside).
fn weak_fingerprint(fp: &str, input: &[u8]) -> bool {
    let short_plain = fp.len() <= 3
        && !fp.contains("sc")
        && fp
            .bytes()
            .all(|b| matches!(b, b's' | b'1' | b'n' | b'o' | b'&' | b'c' | b','));
    let compares = input.iter().any(|b| matches!(b, b'=' | b'<' | b'>'))
        || input.windows(4).any(|w| w.eq_ignore_ascii_case(b"like"));
    let lone_call = (fp.len() == 4 && fp.starts_with("f(") && fp.ends_with(')'))
        || (fp.starts_with("f()") && !compares);
    short_plain || lone_call || fp.starts_with('n') || fp == "X"
}

/// Whether a tokenizer verdict of fingerprint `fp` on `input` counts as the weak rule (1101):
/// a [`weak_fingerprint`], or keywords alone (no SQL syntax character), which sentences
/// contain too, unless a UNION appears or the value starts with a number (numeric-context
/// injection).
fn weak(fp: &str, input: &[u8]) -> bool {
    let words_only = !has_sql_syntax(input) && !fp.contains('U') && !fp.starts_with('1');
    weak_fingerprint(fp, input) || words_only
}

/// Whether a value contains any character of SQL syntax beyond words, numbers and
/// punctuation of prose. A tokenizer verdict on a value without any (`select x from y where`)
/// rests on keywords alone, which ordinary sentences also contain.
fn has_sql_syntax(value: &[u8]) -> bool {
    value.iter().any(|b| {
        matches!(
            b,
            b'\''
                | b'"'
                | b'`'
                | b';'
                | b'('
                | b')'
                | b'='
                | b'<'
                | b'>'
                | b'|'
                | b'&'
                | b'!'
                | b'^'
                | b'~'
                | b'*'
                | b'/'
                | b'%'
                | b'#'
                | b'@'
                | b'\\'
                | b'-'
                | b'+'
                | b'{'
                | b'}'
        )
    })
}

/// The number of SQL meta characters (quotes, backticks, semicolons, parentheses, equals
/// signs, comment starts), counting up to `limit`.
fn count_meta(value: &[u8], limit: usize) -> usize {
    let mut n = 0;
    let mut prev = 0u8;
    for &b in value {
        let hit = match b {
            b'\'' | b'"' | b'`' | b';' | b'(' | b')' | b'=' | b'#' => true,
            b'-' => prev == b'-',
            b'*' => prev == b'/',
            _ => false,
        };
        if hit {
            n += 1;
            if n >= limit {
                break;
            }
        }
        prev = if hit && matches!(b, b'-' | b'*') {
            0
        } else {
            b
        };
    }
    n
}

/// Where the findings of one target go: at most one per rule, only rules of the route's
/// paranoia.
struct Sink<'s, 't> {
    target: &'s Target<'t>,
    paranoia: u8,
    /// Rules already reported (bit `id - 1100`).
    seen: u128,
    out: &'s mut Vec<Finding>,
}

impl Sink<'_, '_> {
    fn bit(rule: &Rule) -> u128 {
        1u128 << (rule.id.saturating_sub(1100) & 127)
    }

    /// Whether a finding of `rule` would be reported.
    fn wants(&self, rule: &Rule) -> bool {
        rule.paranoia <= self.paranoia && self.seen & Self::bit(rule) == 0
    }

    fn emit(&mut self, rule: &'static Rule, view: View, matched: &str) {
        if self.wants(rule) {
            self.seen |= Self::bit(rule);
            self.out
                .push(Finding::new(rule, self.target, view, matched));
        }
    }
}

/// What a tokenizer pass decided.
#[derive(PartialEq, Eq)]
enum Verdict {
    /// Nothing, or only a weak fingerprint below the route's paranoia.
    Open,
    /// A finding was pushed (or would have been, had the rule not already reported).
    Decided,
}

/// Turns the tokenizer's verdict on `input` (the bytes of `shown`, possibly rewritten) into a
/// finding.
fn report_tokenizer(
    sink: &mut Sink<'_, '_>,
    view: View,
    verdict: Tokenized,
    input: &[u8],
    shown: &str,
) -> Verdict {
    match verdict {
        Tokenized::Clean => Verdict::Open,
        Tokenized::Injection(fp) => {
            let fp = fingerprint_str(&fp);
            let rule = if weak(fp, input) {
                &R_LIBINJECTION_WEAK
            } else {
                &R_LIBINJECTION
            };
            if rule.paranoia > sink.paranoia {
                return Verdict::Open;
            }
            if sink.wants(rule) {
                let head: String = shown.chars().take(48).collect();
                sink.emit(rule, view, &format!("[{fp}] {head}"));
            }
            Verdict::Decided
        }
        Tokenized::Panicked => {
            tracing::warn!(target = %sink.target, "libinjection SQL tokenizer panicked; failing closed");
            sink.emit(&R_TOKENIZER_FAILED, view, shown);
            Verdict::Decided
        }
    }
}

/// What ends a word for libinjection's SQL tokenizer (`parse_word`).
const WORD_DELIMITERS: &[u8] = b" []{}<>:\\?=@!#~+-*/&|^%(),';\t\n\x0B\x0C\r\"\xA0\x00";

/// libinjection words that fold into a function when a `(` follows them
/// (`SqliState::fold_tokens`), whatever their type in the keyword table.
const FOLDED_TO_FUNCTION: &[&str] = &[
    "USER_ID",
    "USER_NAME",
    "DATABASE",
    "PASSWORD",
    "USER",
    "CURRENT_USER",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "LOCALTIME",
    "LOCALTIMESTAMP",
];

/// The first words of libinjection's multi-word keywords (`ORDER BY`, `AT TIME ZONE` …),
/// uppercase and sorted: a bare word the tokenizer may merge with the next one.
static PHRASE_STARTS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut v: Vec<&'static str> = libinjectionrs::sqli::sqli_data::SQL_KEYWORDS
        .iter()
        .filter_map(|k| k.word.split_once(' ').map(|(first, _)| first))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
});

/// Whether libinjection's keyword table types `upper` (an uppercase word) as anything but a
/// bare word: the same binary search as `sqli_data::lookup_word`, without its allocation.
fn sql_keyword(upper: &[u8]) -> bool {
    let table = libinjectionrs::sqli::sqli_data::SQL_KEYWORDS;
    table
        .binary_search_by(|k| k.word.as_bytes().cmp(upper))
        .ok()
        .and_then(|i| table.get(i))
        .is_some_and(|k| {
            matches!(
                k.token_type,
                b'k' | b'f'
                    | b'U'
                    | b'E'
                    | b'T'
                    | b't'
                    | b'o'
                    | b'&'
                    | b'v'
                    | b'1'
                    | b'A'
                    | b'B'
                    | b'F'
            )
        })
}

/// Whether libinjection's fingerprint of `input` without a quote context is certain to start
/// with a bare word (`n`), a shape [`weak_fingerprint`] always classes as weak. True when:
///
/// * the value starts with a word (up to the first character that ends a word for the
///   tokenizer) that starts with an ASCII letter, is shorter than a token's value (30 bytes),
///   and neither it nor any prefix of it ending before a `.` is a keyword (the tokenizer splits
///   `select.x` after `select`);
/// * no letter starts a string literal there (`N'…'`, `X'…'`, `E'…'`, `Q'…'`, `NQ'…'`,
///   `U&'…'`, `B'…'` have a single quote among their first three bytes) and there is no
///   backtick, so that word is the first token (in ANSI and MySQL mode alike);
/// * it cannot change type while the tokens fold: it does not start a multi-word keyword (the
///   only merge that retypes a bare word) and is not one of the words a following `(` turns
///   into a function. No other folding rule changes or replaces a first token that is a bare
///   word (the rules that rewrite the left token require it to be an operator, keyword,
///   function, type, collation, brace or backslash).
fn starts_with_bare_word(input: &[u8]) -> bool {
    if input.contains(&b'`') || input.get(1..3).is_some_and(|b| b.contains(&b'\'')) {
        return false;
    }
    if !input.first().is_some_and(u8::is_ascii_alphabetic) {
        return false;
    }
    let len = input
        .iter()
        .position(|b| WORD_DELIMITERS.contains(b))
        .unwrap_or(input.len());
    let mut upper = [0u8; 30];
    let Some(word) = input.get(..len).filter(|w| w.len() < upper.len()) else {
        return false;
    };
    let Some(upper) = upper.get_mut(..len) else {
        return false;
    };
    upper.copy_from_slice(word);
    upper.make_ascii_uppercase();
    let upper = &*upper;
    let keyword_prefix = upper
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'.' && upper.get(..i).is_some_and(sql_keyword));
    let Ok(text) = std::str::from_utf8(upper) else {
        // A character cut by the word's end: let the tokenizer decide.
        return false;
    };
    !keyword_prefix
        && !sql_keyword(upper)
        && !FOLDED_TO_FUNCTION.contains(&text)
        && PHRASE_STARTS.binary_search(&text).is_err()
}

/// [`tokenize`], skipping what cannot change the reported outcome at `paranoia`.
///
/// Below paranoia 2 a weak verdict is not reported. For a value whose bare-context
/// fingerprint must start with a bare word ([`starts_with_bare_word`]), the bare context can
/// only give a weak verdict, which `detect` returns before trying the quote contexts: the
/// outcome can be strong only if the bare context is clean and a quote context strong. So the
/// quote contexts run first (none without quotes) and the bare context only to confirm a
/// strong verdict of theirs.
fn tokenize_at(input: &[u8], paranoia: u8) -> Tokenized {
    if paranoia >= R_LIBINJECTION_WEAK.paranoia || !starts_with_bare_word(input) {
        return tokenize(input);
    }
    let quoted = guarded(input, detect_sqli_quoted);
    let strong = match &quoted {
        Tokenized::Clean => false,
        Tokenized::Injection(fp) => !weak(fingerprint_str(fp), input),
        Tokenized::Panicked => true,
    };
    if !strong {
        return quoted;
    }
    match guarded(input, |input| sqli_pass(input, Context::Bare)) {
        Tokenized::Clean => quoted,
        bare => bare,
    }
}

/// The tokenizer passes: the decoded value; the same with `+` read as a space (a value that
/// went through one more form decoding than the gateway saw, or a `+` the client meant as a
/// space); the canonical value when entity decoding or Unicode folding changed more than case.
fn tokenizer_passes(sink: &mut Sink<'_, '_>, views: &mut Views) {
    let paranoia = sink.paranoia;
    let decoded = views.get(View::Decoded);
    let bytes = decoded.as_bytes();
    let verdict = tokenize_at(bytes, paranoia);
    if report_tokenizer(sink, View::Decoded, verdict, bytes, decoded) == Verdict::Decided {
        return;
    }
    if bytes.contains(&b'+') {
        let mut buf = [0u8; TOKENIZER_MAX];
        let n = bytes.len().min(TOKENIZER_MAX);
        for (d, &s) in buf.iter_mut().zip(bytes) {
            *d = if s == b'+' { b' ' } else { s };
        }
        let input = buf.get(..n).unwrap_or_default();
        if report_tokenizer(
            sink,
            View::Decoded,
            tokenize_at(input, paranoia),
            input,
            decoded,
        ) == Verdict::Decided
        {
            return;
        }
    }
    if bytes.iter().any(|&b| b == b'&' || b >= 0x80) {
        let canonical = views.get(View::Canonical);
        let input = canonical.as_bytes();
        report_tokenizer(
            sink,
            View::Canonical,
            tokenize_at(input, paranoia),
            input,
            canonical,
        );
    }
}

/// Rule 1127: finds a quote that closes the string the application opened (an odd-numbered
/// quote: the value's own strings come in pairs after it), preceded by a word, a number, a
/// closing parenthesis or nothing, and followed by an operator and a reopening quote
/// (`after` anywhere, `after_start` at the start of the value; see [`REOPEN`]). A single quote
/// between a letter, digit or parenthesis and a letter is an apostrophe (`it's`, `O'Brien`,
/// `f()'s`) and does not count, so `it's 'a' and 'b'` is prose while `a' and 'b` is a
/// breakout; except before a word operator quoted on its own (`'or'`, `'and'`, `'xor'`):
/// `admin'or'1` is MySQL's `'admin'or'1'`, true for every row. Returns the matched range.
fn breakout_reopen(
    text: &[u8],
    quote: u8,
    after: &Regex,
    after_start: &Regex,
) -> Option<std::ops::Range<usize>> {
    // Whether an odd number of counted quotes precedes (we are inside one of the value's
    // own strings).
    let mut inside = false;
    for (i, &b) in text.iter().enumerate() {
        if b != quote {
            continue;
        }
        let prev = i.checked_sub(1).and_then(|j| text.get(j)).copied();
        let next = text.get(i + 1).copied();
        if quote == b'\''
            && prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == b')')
            && next.is_some_and(|c| c.is_ascii_alphabetic())
            && !text.get(i..).is_some_and(quoted_word_operator)
        {
            continue;
        }
        let after = if i == 0 { after_start } else { after };
        let closes_app_string =
            !inside && prev.is_none_or(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b')');
        let reopened = closes_app_string
            .then(|| text.get(i..).and_then(|rest| after.find(rest)))
            .flatten();
        if let Some(m) = reopened {
            return Some(i..i + m.end());
        }
        inside = !inside;
    }
    None
}

/// Whether `rest` starts with a word operator between single quotes and something after them
/// (`'or'1`, `'and'0`, `'xor'1`; `rest` is lowercase). With nothing after, the application's
/// closing quote makes the operand an empty string (`'d'or''`), which is false.
fn quoted_word_operator(rest: &[u8]) -> bool {
    [b"'or'".as_slice(), b"'and'", b"'xor'"]
        .iter()
        .any(|op| rest.len() > op.len() && rest.starts_with(op))
}

/// Inspects one value for SQL injection.
pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = t.value.as_bytes();
    if raw.is_empty() {
        return;
    }
    let compiled = &*COMPILED;
    let keyword = |text: &[u8]| {
        compiled
            .keywords
            .as_ref()
            .is_none_or(|k| has_keyword(k, text))
    };
    match scan(raw, paranoia) {
        Scan::Meta => {}
        Scan::Plain => {
            if !keyword(raw) && !starts_numeric_or(raw) {
                return;
            }
        }
        Scan::Encoded => {
            let canonical = views.get(View::Canonical).as_bytes();
            if scan(canonical, paranoia) != Scan::Meta
                && !keyword(canonical)
                && !starts_numeric_or(canonical)
            {
                return;
            }
        }
    }
    let mut sink = Sink {
        target: t,
        paranoia,
        seen: 0,
        out,
    };

    tokenizer_passes(&mut sink, views);

    for vs in &compiled.sets {
        if vs.paranoia > paranoia {
            continue;
        }
        let text = views.get(vs.view);
        let bytes = text.as_bytes();
        // One pass of the whole set decides for (nearly) every value; only a value that
        // matches something pays for the individual patterns, which also locate the fragment.
        if !vs.set.is_match(bytes) {
            continue;
        }
        for (rule, re) in &vs.members {
            if !sink.wants(rule) {
                continue;
            }
            if let Some(m) = re.find(bytes) {
                sink.emit(rule, vs.view, text.get(m.range()).unwrap_or(text));
            }
        }
    }

    if let (true, Some(re)) = (sink.wants(&R_TAUTOLOGY), &compiled.name_comparison) {
        let text = views.get(View::Sql);
        let bytes = text.as_bytes();
        // The comparison needs a `=` (also in `<=>`) or a `like`.
        let compares = bytes.contains(&b'=') || bytes.windows(4).any(|w| w == b"like");
        if let Some(m) = compares
            .then(|| re.find_iter(bytes).find(|m| same_operands(m.as_bytes())))
            .flatten()
        {
            sink.emit(&R_TAUTOLOGY, View::Sql, text.get(m.range()).unwrap_or(text));
        }
    }

    if let (true, Some(re)) = (sink.wants(&R_NUMERIC_TAUTOLOGY), &compiled.numeric_pair) {
        let text = views.get(View::Sql);
        if let Some(m) = re
            .captures(text.as_bytes())
            .filter(same_nonzero_numbers)
            .and_then(|c| c.get(0))
        {
            sink.emit(
                &R_NUMERIC_TAUTOLOGY,
                View::Sql,
                text.get(m.range()).unwrap_or(text),
            );
        }
    }

    if sink.wants(&R_BREAKOUT_REOPEN) {
        let text = views.get(View::Sql);
        let bytes = text.as_bytes();
        let [single, double, single_start, double_start] = &compiled.reopen;
        for (quote, after, after_start) in
            [(b'\'', single, single_start), (b'"', double, double_start)]
        {
            let (Some(after), Some(after_start)) = (after, after_start) else {
                continue;
            };
            if let Some(r) = breakout_reopen(bytes, quote, after, after_start) {
                sink.emit(&R_BREAKOUT_REOPEN, View::Sql, text.get(r).unwrap_or(text));
                break;
            }
        }
    }

    if sink.wants(&R_META_MANY) {
        let canonical = views.get(View::Canonical);
        if count_meta(canonical.as_bytes(), 4) >= 4 {
            sink.emit(&R_META_MANY, View::Canonical, canonical);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Location, Part};

    fn run(value: &str, paranoia: u8) -> Vec<Finding> {
        let t = Target::new(Location::Query, "q", Part::Value, value);
        let mut views = Views::new();
        views.load(value);
        let mut out = Vec::new();
        inspect(&t, &mut views, paranoia, &mut out);
        out
    }

    fn rules(value: &str, paranoia: u8) -> Vec<u32> {
        run(value, paranoia).iter().map(|f| f.rule).collect()
    }

    fn score(value: &str, paranoia: u8) -> u32 {
        run(value, paranoia)
            .iter()
            .map(|f| f.severity.score())
            .sum()
    }

    #[test]
    fn every_pattern_compiles_and_fits_the_set_buffer() {
        for pat in PATTERNS {
            assert!(
                compile(pat.regex).is_some(),
                "pattern does not compile: {}",
                pat.regex
            );
        }
        assert!(COMPILED.reopen.iter().all(Option::is_some));
        assert!(COMPILED.name_comparison.is_some());
        assert!(COMPILED.numeric_pair.is_some());
        let members: usize = COMPILED.sets.iter().map(|vs| vs.members.len()).sum();
        assert_eq!(members, PATTERNS.len());
        for vs in &COMPILED.sets {
            assert_eq!(vs.set.len(), vs.members.len());
        }
        assert_eq!(
            COMPILED.keywords.as_ref().map(|k| k.patterns_len()),
            Some(KEYWORDS.len())
        );
    }

    #[test]
    fn rule_ids_are_unique_in_range_and_patterns_use_catalogue_rules() {
        let mut ids: Vec<u32> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        for r in RULES {
            assert!((1100..=1199).contains(&r.id));
            assert!((1..=4).contains(&r.paranoia));
            assert_eq!(r.class, Class::Sqli);
        }
        for pat in PATTERNS {
            assert!(
                RULES
                    .iter()
                    .any(|r| r.id == pat.rule.id && r.paranoia == pat.rule.paranoia)
            );
        }
    }

    #[track_caller]
    fn assert_rule(value: &str, id: u32) {
        let got = rules(value, 1);
        assert!(
            got.contains(&id),
            "{value:?}: expected rule {id}, got {got:?}"
        );
    }

    #[track_caller]
    fn assert_blocked(value: &str, paranoia: u8) {
        let s = score(value, paranoia);
        assert!(
            s >= 5,
            "{value:?} at PL{paranoia}: score {s} ({:?})",
            rules(value, paranoia)
        );
    }

    #[track_caller]
    fn assert_passes(value: &str, paranoia: u8) {
        let got = run(value, paranoia);
        assert!(got.is_empty(), "{value:?} at PL{paranoia}: {got:#?}");
    }

    /// `EXEC @variable` runs dynamic SQL; `npm exec @scope/package` is a command line that
    /// Markdown documentation quotes.
    #[test]
    fn exec_of_a_variable_not_of_a_scoped_package() {
        for v in [
            "exec @sql",
            "EXEC @q;",
            "x';exec @q--",
            "1; execute @cmd",
            "exec @s/**/",
        ] {
            assert_rule(v, 1125);
            assert_blocked(v, 1);
        }
        for v in [
            "Run `npm exec @scope/create-app` to scaffold it.",
            "* `npm init @usr` -> `npm exec @usr/create`",
        ] {
            assert!(!rules(v, 1).contains(&1125), "{v:?}: {:?}", rules(v, 1));
            assert!(score(v, 1) < 5, "{v:?}: {:?}", rules(v, 1));
        }
    }

    #[test]
    fn techniques_at_paranoia_1() {
        assert_rule("1 union select 1,2,3", 1110);
        assert_rule("-1 UNION ALL SELECT NULL,NULL--", 1110);
        assert_rule("1 union(select(password)from(users))", 1110);
        assert_rule("1' or '1'='1", 1111);
        assert_rule("admin' or 1=1--", 1111);
        assert_rule("1 or 1=1", 1111);
        assert_rule("x\") or (\"a\"=\"a", 1111);
        assert_rule("1 and 7533=7533", 1111);
        assert_rule("' or username like '%", 1111);
        assert_rule("1; drop table users", 1112);
        assert_rule("1'; exec master..xp_cmdshell 'dir'--", 1112);
        assert_rule("1;select * from users", 1112);
        assert_rule("1 and sleep(5)", 1113);
        assert_rule("1' and benchmark(5000000,md5(1))#", 1113);
        assert_rule("1; waitfor delay '0:0:5'--", 1113);
        assert_rule("1 or 1=dbms_pipe.receive_message(chr(65),5)", 1113);
        assert_rule("1 and pg_sleep(5)", 1113);
        assert_rule("1 and extractvalue(1,concat(0x7e,version()))", 1114);
        assert_rule("1 and updatexml(1,concat(0x7e,user()),1)", 1114);
        assert_rule("1 and 1=convert(int,@@version)", 1114);
        assert_rule(
            "1 union select table_name from information_schema.tables",
            1115,
        );
        assert_rule("select name from sysobjects", 1115);
        assert_rule("' union select load_file('/etc/passwd')--", 1116);
        assert_rule("1 into outfile '/tmp/x'", 1116);
        assert_rule("'; exec xp_cmdshell 'whoami'--", 1117);
        assert_rule("1 /*!50000union*/ select 1", 1118);
        assert_rule("1 and if(1=1,sleep(5),0)", 1119);
        assert_rule("1 and elt(3114=3114,sleep(5))", 1119);
        assert_rule("1' and ascii(substring(user(),1,1))>64--", 1120);
        assert_rule("1 and (select count(*) from users)>0", 1120);
        assert_rule("select @@version", 1121);
        assert_rule("1=(select 1)", 1121);
        assert_rule("@@version", 1122);
        assert_rule("char(65)||char(66)", 1123);
        assert_rule("concat(0x7e,user())", 1123);
        assert_rule("1 order by 10--", 1124);
        assert_rule("1' order by 3#", 1124);
        assert_rule("declare @s varchar(8000) set @s=0x73", 1125);
        assert_rule("admin' or 1--", 1126);
        assert_rule("\" or true#", 1126);
        assert_rule("A' AND 'B", 1127);
        assert_rule("x'='y", 1127);
        assert_rule("'-'", 1127);
        assert_rule("aa'|3!='4", 1127);
        assert_rule("1' or '1' xor '0", 1127);
        assert_rule("make_set(5679=9769,9769)", 1119);
        assert_rule("\") or (a=a", 1111);
        assert_rule("x' or username like username--", 1111);
        assert_rule("1or1=1", 1111);
        assert_rule("1 ORDER BY SLEEP(5)", 1113);
        assert_rule("' || myappadmin.adduser('admin', 'newpass') || '", 1123);
        assert_rule("select current_user;", 1121);
    }

    #[test]
    fn libinjection_is_the_main_rule() {
        assert!(rules("1' OR '1'='1", 1).contains(&1100));
        assert!(
            rules(
                "-1' and 1=1 union/* foo */select load_file('/etc/passwd')--",
                1
            )
            .contains(&1100)
        );
    }

    #[test]
    fn a_tokenizer_panic_is_a_critical_finding() {
        let verdict = guarded(b"x", |_| -> Option<[u8; 8]> { panic!("tokenizer bug") });
        assert!(matches!(verdict, Tokenized::Panicked));
        let t = Target::new(Location::Query, "q", Part::Value, "x");
        let mut out = Vec::new();
        let mut sink = Sink {
            target: &t,
            paranoia: 1,
            seen: 0,
            out: &mut out,
        };
        assert!(report_tokenizer(&mut sink, View::Decoded, verdict, b"x", "x") == Verdict::Decided);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, 1199);
        assert_eq!(out[0].severity, Severity::Critical);
    }

    #[test]
    fn tokenizer_input_is_capped() {
        let long = vec![b'a'; TOKENIZER_MAX * 3];
        let verdict = guarded(&long, |input| {
            assert_eq!(input.len(), TOKENIZER_MAX);
            None
        });
        assert!(matches!(verdict, Tokenized::Clean));
    }

    #[test]
    fn keywords_count_only_where_they_can_be_keywords() {
        let ac = COMPILED.keywords.as_ref().expect("keywords");
        for v in [
            "1 union select 1",
            "1union select",
            "x order by 1",
            "ORDER BY 2",
            "a.union",
            "a rlike b",
            "x from dual",
            "msysobjects",
            "and0x41414141",
            "executes",
            "pg_sleep",
            "sp_who2",
            "null",
            "x$case",
        ] {
            assert!(has_keyword(ac, v.as_bytes()), "{v}");
        }
        for v in [
            "/api/orders",
            "dropdown",
            "individual",
            "nullable",
            "updated_at",
            "showcase",
            "xrlike",
            "union1",
            "reorder",
            "from_date",
            "selected items",
        ] {
            assert!(!has_keyword(ac, v.as_bytes()), "{v}");
        }
        assert_passes("/api/orders", 4);
        assert_passes("/users/updated_items", 2);
    }

    #[test]
    fn bare_word_gate() {
        for v in [
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "https://shop.example.com/cart?step=2",
            "en-GB,en;q=0.7",
            "Dr.Who",
            "Gift wrap, please; it's for Anne's birthday",
            "Dr. Ann O'Neil",
            "x\"y",
        ] {
            assert!(starts_with_bare_word(v.as_bytes()), "{v}");
        }
        for v in [
            "Leave at the door -- ring twice.",
            "user(1)",
            "database()",
            "order by 1",
            "at time zone",
            "select.x",
            "or 1=1",
            "it's",
            "n'abc",
            "nq'[x]'",
            "u&'x'",
            "x`y",
            "1 or 1",
            " a",
            "",
            "n'abc",
        ] {
            assert!(!starts_with_bare_word(v.as_bytes()), "{v}");
        }
    }

    /// The claim behind [`starts_with_bare_word`]: whenever it holds, libinjection's
    /// fingerprint without a quote context starts with a bare word (or is the evil-token `X`,
    /// or empty), in ANSI and MySQL mode; and [`tokenize_at`] reports what [`tokenize`] does.
    #[test]
    fn bare_word_gate_matches_libinjection() {
        use libinjectionrs::{SqliFlags, SqliState};
        const PIECES: &[&str] = &[
            "a",
            "x",
            "foo",
            "user",
            "database",
            "password",
            "current_user",
            "at",
            "time",
            "zone",
            "order",
            "by",
            "group",
            "union",
            "all",
            "select",
            "or",
            "and",
            "not",
            "1",
            "0x41",
            "1e5",
            ".",
            ",",
            ";",
            "(",
            ")",
            "/",
            "*",
            "-",
            "--",
            "#",
            "/*",
            "*/",
            "=",
            "<",
            ">",
            "|",
            "||",
            "&",
            "@",
            "@@version",
            "$",
            "{",
            "}",
            "[",
            "]",
            "\\",
            ":",
            "::",
            "?",
            "!",
            "~",
            "+",
            "%",
            "in",
            "like",
            "is",
            "null",
            "sleep",
            "char",
            "version",
            "exec",
            "xp_cmdshell",
            "waitfor",
            "delay",
            "into",
            "outfile",
            "from",
            "dual",
            "where",
            "set",
            "begin",
            "declare",
            "if",
            "end",
            "cross",
            "join",
            "left",
            "character",
            "varying",
            "Mozilla",
            "https",
            "en",
            "n",
            "q",
            "u",
            "b",
            "e",
            "Dr.",
            "a.b",
            "select.x",
            "\u{e9}",
            " ",
            " ",
            " ",
            "\t",
            "\n",
            "\u{a0}",
            "'",
            "'",
            "\"",
            "it's",
            "O'Neil",
            "'1'='1",
            "' or '",
            "x'",
            "n'",
            "u&'",
            "\" or \"",
        ];
        let contexts = [
            SqliFlags::FLAG_QUOTE_NONE | SqliFlags::FLAG_SQL_ANSI,
            SqliFlags::FLAG_QUOTE_NONE | SqliFlags::FLAG_SQL_MYSQL,
        ];
        let reported = |t: &Tokenized, input: &[u8]| match t {
            Tokenized::Clean => None,
            Tokenized::Injection(fp) => {
                (!weak(fingerprint_str(fp), input)).then(|| fingerprint_str(fp).to_string())
            }
            Tokenized::Panicked => Some("panic".to_string()),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut gated, mut strong) = (0, 0);
        for _ in 0..200_000 {
            let mut v = String::new();
            for _ in 0..rng.usize(1..12) {
                v.push_str(PIECES[rng.usize(..PIECES.len())]);
                if rng.bool() {
                    v.push(' ');
                }
            }
            let input = v.as_bytes();
            let want = reported(&tokenize(input), input);
            strong += usize::from(want.is_some());
            assert_eq!(reported(&tokenize_at(input, 1), input), want, "{v:?}");
            if !starts_with_bare_word(input) {
                continue;
            }
            gated += 1;
            for flags in contexts {
                let fp = SqliState::new(input, flags).get_fingerprint();
                let fp = fp.as_str();
                assert!(
                    fp.is_empty() || fp.starts_with('n') || fp == "X",
                    "{v:?}: {fp}"
                );
            }
        }
        assert!(gated > 10_000 && strong > 1_000, "{gated} {strong}");
    }

    /// [`detect_sqli`] decides as `libinjectionrs::detect_sqli` does, with the same fingerprint.
    #[test]
    fn detect_sqli_matches_the_crate() {
        const PIECES: &[&str] = &[
            "1",
            "a",
            "x",
            "'",
            "\"",
            "`",
            " ",
            "or",
            "and",
            "union",
            "select",
            "from",
            "--",
            "-- ",
            "#",
            "/*",
            "*/",
            "/*!",
            "(",
            ")",
            "=",
            ";",
            ",",
            "@",
            "@@version",
            "sleep",
            "char",
            "0x41",
            "null",
            "-",
            "+",
            "||",
            "like",
            "not",
            "in",
            "drop",
            "table",
            "\n",
            "it's",
            "O'Neil",
            "e'",
            "n'",
            "x'41'",
            "u&'",
            "\\",
            "{",
            "}",
            "$$",
            "::",
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        for i in 0..100_000 {
            let mut v = String::new();
            for _ in 0..rng.usize(1..10) {
                v.push_str(PIECES[rng.usize(..PIECES.len())]);
                if rng.u8(..3) == 0 {
                    v.push(' ');
                }
            }
            if i == 0 {
                v.clear();
            }
            let input = v.as_bytes();
            let expected = libinjectionrs::detect_sqli(input);
            let got = detect_sqli(input);
            assert_eq!(got.is_some(), expected.is_injection(), "{v:?}");
            if let (Some(fp), Some(want)) = (got, expected.fingerprint) {
                assert_eq!(fingerprint_str(&fp), want.as_str(), "{v:?}");
            }
        }
    }

    #[test]
    fn one_finding_per_rule() {
        let got = rules("1 union select 1 union select 2 union all select 3", 1);
        assert_eq!(got.iter().filter(|&&r| r == 1110).count(), 1);
    }

    #[test]
    fn benign_values_pass_at_paranoia_1() {
        for v in [
            "",
            "John O'Brien",
            "c/ caridad s/n",
            "Apt 4B, 12 Union Street",
            "select x from y where",
            "select 'and'",
            "Union Select Credit Account",
            "Please select pair #1",
            "1; exec will create the case 7",
            "BASE; SET SWAROVSKI",
            "Tom and Jerry or Mickey",
            "\"WOOD\" AND \"SIGN\" AND \"POLKA DOTS\"",
            "2 OR 4 METAL BUTTONS",
            "7 AND A HALF",
            "case 13\"",
            "I like having true friends",
            "O'connors UNION selected a few friends",
            "the sleep (8 hours) matters",
            "Get good sleep",
            "1950' AND 60'S WOMEN'S COATS",
            "it's a drop-in replacement; update your settings",
            "BAMBOO CHARCOAL SOAP 1 '#",
            "0x5aAeb6053f3E94C9b9A09f33669435E7Ef1BeAed",
            "POLYGON((30 10, 40 40, 20 40, 10 20, 30 10))",
            "user@example.com",
            "https://example.com/search?q=a+b&order=asc",
            "Order by 5pm for next-day delivery",
            "if all else fails call grandma",
            "1 collate these union documents",
            "it's 'quoted' and 'fine'",
            "Let's pick 'A' or 'B'",
            "the string 'ab' * 28 + 'ac' repeats",
            "MISTERGLAS.DK'*''",
            "\"WHITE\" + \"PLATE\" + \"POTTERY\"",
            "rock 'n' roll",
            "char(10)",
            "sleep(well)",
            "benchmark(2024)",
            "/*! Doc comment of a module */",
            "cats or dogs=pets",
            "Tom or Jerry like cheese",
            "a=0 and b=1",
            "n = 2 and n = 3",
        ] {
            assert_passes(v, 1);
        }
    }

    #[test]
    fn paranoia_levels_are_progressively_stricter() {
        assert!(score("' or", 1) < 5);
        assert_blocked("abc' or", 2);
        assert!(score("O'Brien and sons", 2) < 5);
        assert_blocked("O'Brien and sons", 3);
        assert!(score("it's", 3) < 5);
        assert!(!rules("it's", 4).is_empty());
        assert_blocked("it's ok; \"really\" (yes)", 4);
    }

    #[test]
    fn evasions_through_encoding_and_comments() {
        // These rely on the views (URL decoding, entities, full-width folding, comments).
        assert_blocked("1%27%20or%20%271%27%3D%271", 1);
        assert_blocked("1%2527%2520union%2520select%25201,2--", 1);
        assert_blocked("1 UNION/**/SELECT/**/password/**/FROM/**/users", 1);
        assert_blocked("1 ＵＮＩＯＮ ＳＥＬＥＣＴ 1,2", 1);
        assert_blocked("1&#39; or &#39;1&#39;=&#39;1", 1);
    }

    /// Login bypass by a quote and a comment (1128) or a quoted word operator (1127), and
    /// numeric-context tautologies (1129).
    const BYPASSES: &[(&str, u32)] = &[
        ("admin'-- -", 1128),
        ("admin'#", 1128),
        ("admin' #", 1128),
        ("admin';#", 1128),
        ("admin'-- ", 1128),
        ("admin'--+", 1128),
        ("admin')-- -", 1128),
        ("admin')#", 1128),
        ("admin' ) ; -- x", 1128),
        ("admin'/*", 1128),
        ("ADMIN'#", 1128),
        ("john.doe@example.com'-- -", 1128),
        ("A-1'--", 1128),
        ("admin'or'1", 1127),
        ("admin'OR'1'", 1127),
        ("x'and'0", 1127),
        ("0 or 1", 1129),
        ("1 or 1", 1129),
        ("1 || 1", 1129),
        ("1||1", 1129),
        ("-1 or 1 limit 1", 1129),
        ("1 xor 1", 1129),
        ("1 or not 0", 1129),
        ("1 OR TRUE", 1129),
        ("1 or 1-- -", 1129),
        ("1/**/or/**/1", 1129),
        ("(1) or (1)", 1129),
        ("1 or id-- -", 1129),
        ("1 or id#", 1129),
        ("1 or id/*", 1129),
        ("-1 or 2 limit 1", 1129),
        ("1 or x order by 1", 1129),
        // The same non-zero number on both sides: true for every row, and no answer.
        ("2 or 2", 1129),
        ("-2 or -2", 1129),
        ("2||2", 1129),
        ("2 xor 2", 1129),
        ("(2) or (2)", 1129),
        ("07 OR 7", 1129),
        ("2/**/or/**/2", 1129),
        ("2 or 2 limit 1", 1129),
        ("99 or 99;", 1129),
    ];

    /// Look-alikes of [`BYPASSES`] in ordinary input. `1 or 2`, `10 or less`, `1950 or 1960`
    /// are form answers, so rule 1129 takes a right operand other than 1, TRUE, NOT a literal
    /// or the left operand again only before a comment ending the value or LIMIT/ORDER BY:
    /// `1 or id` alone is not caught (`1 or more` has the same shape), nor is `2 or 3`.
    const LOOK_ALIKES: &[&str] = &[
        "O'Reilly",
        "it's #1",
        "Tom's #2 pick",
        "rock 'n' roll",
        "rock'n'roll",
        "Ctrl+Alt+Del",
        "1 or 2 items",
        "1 or 2",
        "1 || 2",
        "10 OR LESS",
        "1950 or 1960",
        "2 or 3",
        "-2 or 2",
        "0 or 0",
        "2 or 2 items",
        "2 or 3 days",
        "14 || 16",
        "1 or more",
        "0 or more",
        "1 or not sure",
        "2 or 3 #hashtags",
        "jane.o'neil@example.com",
        "O'Reilly #1 bestseller",
        "7\" #2 CIRCULAR NEEDLE",
        "'#'",
        "l'or",
        "d'or'",
        "Lion d'Or",
        "D'Or Maison",
        "Tom's -- best",
        "Let's go -- now",
        "It's 'or' not 'and'",
    ];

    #[test]
    fn login_bypasses_and_numeric_tautologies_at_paranoia_1() {
        let mut wrong = Vec::new();
        for &(v, id) in BYPASSES {
            let got = rules(v, 1);
            if !got.contains(&id) || score(v, 1) < 5 {
                wrong.push(format!("{v:?}: expected {id}, got {got:?}"));
            }
        }
        for v in LOOK_ALIKES {
            let got = rules(v, 1);
            if !got.is_empty() {
                wrong.push(format!("{v:?}: benign, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn numeric_or_start() {
        for v in [
            "0 or 1",
            " (1) OR 1",
            "-1 xor 1",
            "1or1",
            "2+or+3",
            "1 order",
        ] {
            assert!(starts_numeric_or(v.as_bytes()), "{v}");
        }
        for v in [
            "or 1", "a1 or 1", "1 and 1", "-", "1", "1 o", "1.5 or 1", "",
        ] {
            assert!(!starts_numeric_or(v.as_bytes()), "{v}");
        }
    }

    /// The engine at the defaults (block, paranoia 1, threshold 5) on `value` sent as a query
    /// parameter, a JSON string field and a form field: whether each was blocked.
    fn engine_blocks(value: &str) -> [(&'static str, bool); 3] {
        use crate::config::RouteWaf;
        use crate::engine::{BodyState, Inspection};
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
        // A client typing a `+` in a query or form means a space; everything else encoded.
        const ENCODED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'+');
        let encoded = utf8_percent_encode(value, ENCODED).to_string();
        let blocked = |uri: &str, content_type: Option<&str>, body: &str| {
            let mut req = http::Request::builder().method("POST").uri(uri);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let (head, ()) = req.body(()).expect("request").into_parts();
            let body = if body.is_empty() {
                BodyState::None
            } else {
                BodyState::Buffered(body.as_bytes())
            };
            let inspection = Inspection {
                head: &head,
                path: "/login",
                client_ip: "192.0.2.1".parse().expect("ip"),
                body,
            };
            crate::engine::inspect(&RouteWaf::default(), &inspection).blocked
        };
        let json = format!(
            "{{\"user\":{}}}",
            serde_json::to_string(value).expect("json")
        );
        [
            (
                "query",
                blocked(&format!("/login?user={encoded}"), None, ""),
            ),
            ("json", blocked("/login", Some("application/json"), &json)),
            (
                "form",
                blocked(
                    "/login",
                    Some("application/x-www-form-urlencoded"),
                    &format!("user={encoded}"),
                ),
            ),
        ]
    }

    #[test]
    fn bypasses_are_blocked_in_query_json_and_form() {
        let mut wrong = Vec::new();
        for &(v, _) in BYPASSES {
            for (place, blocked) in engine_blocks(v) {
                if !blocked {
                    wrong.push(format!("{v:?} as {place} not blocked"));
                }
            }
        }
        for v in LOOK_ALIKES {
            for (place, blocked) in engine_blocks(v) {
                if blocked {
                    wrong.push(format!("{v:?} as {place} blocked"));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn paranoia_gates_rules() {
        for f in run("' union select 1 from dual --", 4) {
            assert!(RULES.iter().any(|r| r.id == f.rule));
        }
        for f in run("' union select 1 from dual --", 1) {
            let r = RULES.iter().find(|r| r.id == f.rule);
            assert_eq!(r.map(|r| r.paranoia), Some(1));
        }
    }
}
