//! Raw → validated. Every problem is collected with its path; nothing stops at the first.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use portcullis_core::path::{EncodedSlash, PathRules, Semicolons};
use portcullis_core::units::compile_duration;
use portcullis_core::{AuthMethod, ConfigErrors, RawSecretOrString};
use portcullis_ipfilter::{IpRules, parse_nets};
use portcullis_limits::HeadLimits;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::raw::*;
use crate::validated::*;

/// Names a request header may not be given by `request_headers`: framing and hop-by-hop
/// fields, which only the engine may set (a route must not be able to open a smuggling hole).
const FORBIDDEN_HEADER_OPS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
];

/// Compiles a raw configuration. `base_dir` resolves relative file paths.
pub fn compile(raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut e = ConfigErrors::new();

    let listeners = compile_listeners(&raw.listeners, base_dir, &mut e);
    let admin = compile_admin(&raw.admin, base_dir, &mut e);
    let server = compile_server(&raw.server, &mut e);
    let audit = Audit {
        enabled: raw.audit.enabled,
        output: raw.audit.output,
        path: raw.audit.path.as_ref().map(|p| resolve(base_dir, p)),
    };
    if raw.audit.output == AuditOutput::File && raw.audit.path.is_none() {
        e.push("audit.path", "required when audit.output is \"file\"");
    }
    let logging = Logging {
        format: raw.logging.format,
        level: raw.logging.level.clone(),
    };

    let mut upstream_index = HashMap::new();
    let mut upstreams = Vec::new();
    for (name, u) in &raw.upstreams {
        let path = format!("upstreams.{name}");
        upstream_index.insert(name.clone(), upstreams.len());
        upstreams.push(compile_upstream(name, u, &path, base_dir, &mut e));
    }

    let auth = portcullis_authn::config::compile(&raw.auth, base_dir, &mut e);
    let authz = portcullis_authz::config::compile(&raw.authz, base_dir, &mut e);
    let rate_limits = portcullis_ratelimit::config::compile(&raw.rate_limits, &mut e);
    let waf = portcullis_waf::config::compile(&raw.waf, &mut e);
    let bans = Arc::new(portcullis_ipfilter::bans::BanRules::compile(
        &raw.bans, "bans", base_dir, &mut e,
    ));
    let security_headers =
        portcullis_response::compile_global(raw.security_headers.as_ref(), &mut e);
    let errors = portcullis_response::compile_errors_global(raw.errors.as_ref(), &mut e);
    let token_exchange = raw
        .token_exchange
        .as_ref()
        .map(|t| portcullis_tokenx::compile(t, base_dir, &auth, &mut e));
    if token_exchange.as_ref().is_some_and(|t| t.needs_mtls()) && !mtls_listener(&raw) {
        e.push(
            "token_exchange.clients",
            "clients with spiffe_id or certificate_subject need a TLS listener with client_auth",
        );
    }
    let mut routes = Vec::new();
    let mut files = Vec::new();
    let mut names = HashSet::new();
    let listener_names: Vec<&str> = raw.listeners.iter().map(|l| l.name.as_str()).collect();
    // A client tier bound to an authority names one that exists: a misspelt name would
    // silently leave the client on the base values.
    for (client, t) in &raw.rate_limits.clients {
        if let portcullis_ratelimit::config::RawClientTier::Scoped(t) = t {
            let a = t.authority.as_str();
            let known = raw.auth.jwt.contains_key(a)
                || raw.auth.introspection.contains_key(a)
                || (a == "api_keys" && raw.auth.api_keys.is_some())
                || listener_names.contains(&a);
            if !known {
                e.push(
                    format!("rate_limits.clients.{client}.authority"),
                    format!(
                        "\"{a}\" names no issuer (auth.jwt), introspection endpoint (auth.introspection), \
                         api_keys or listener"
                    ),
                );
            }
        }
    }
    let sections = Sections {
        listeners: &listener_names,
        upstreams: &upstream_index,
        server: &server,
        auth: &auth,
        authz: &authz,
        rate_limits: &rate_limits,
        waf: &waf,
        security_headers: &security_headers,
        errors: &errors,
        base_dir,
    };
    // Headers the authorization step sets on some route and removes from every request: a
    // policy decision's, every route's verified tenant.
    let authz_owned: Vec<HeaderName> = authz
        .policy_headers
        .iter()
        .cloned()
        .chain(raw.routes.iter().filter_map(|r| {
            let t = r.authz.as_ref()?.tenant.as_ref()?;
            HeaderName::from_bytes(t.upstream_header.as_bytes()).ok()
        }))
        .collect();
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(r.name.as_str()) {
            e.push(
                format!("{path}.name"),
                format!("duplicate route name \"{}\"", r.name),
            );
        }
        match &r.openapi {
            None => routes.push(compile_route(r, &path, &sections, &[], &mut e)),
            Some(o) => files.extend(expand_openapi(r, o, &path, &sections, &mut routes, &mut e)),
        }
        if routes.last().is_some_and(|r| {
            r.auth
                .methods
                .contains(&portcullis_authn::config::Method::Mtls)
        }) && !raw
            .listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()))
        {
            e.push(
                format!("{path}.auth.methods"),
                "mtls needs a TLS listener with client_auth",
            );
        }
        if let Some(r) = routes.last() {
            check_renames_into_vouched_headers(r, &auth, &authz_owned, &path, &mut e);
            check_token_exchange_route(
                r,
                (&upstreams, &listeners, &server),
                token_exchange.is_some(),
                &path,
                &mut e,
            );
        }
        // The internal token and an exchanged one share issuer and key (and, with
        // `requested_token_type=jwt`, `typ`): under one audience a service could not tell the
        // token the gateway minted for a request it verified from one a client of the token
        // endpoint holds and may present at will.
        if let (Some(t), Some(x)) = (
            r.auth.as_ref().and_then(|a| a.internal_token.as_ref()),
            token_exchange.as_ref(),
        ) && x.audiences.iter().any(|a| a.name == t.audience)
        {
            e.push(
                format!("{path}.auth.internal_token.audience"),
                format!(
                    "\"{}\" is also a token_exchange audience: a service could not tell the \
                     gateway's per-request token from an exchanged one; give them different audiences",
                    t.audience
                ),
            );
        }
    }

    let mut addrs = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.address.port() != 0 && !addrs.insert(l.address) {
            e.push(
                format!("listeners[{i}].address"),
                format!("{} is used twice", l.address),
            );
        }
    }
    if admin.enabled && admin.address.port() != 0 && addrs.contains(&admin.address) {
        e.push(
            "admin.address",
            format!("{} is also a client listener", admin.address),
        );
    }

    e.into_result(Config {
        raw,
        source: None,
        listeners,
        admin,
        server,
        logging,
        audit,
        upstreams,
        routes,
        token_exchange,
        auth,
        authz,
        rate_limits,
        waf,
        bans,
        security_headers: Arc::new(security_headers),
        files,
    })
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    portcullis_core::resolve_path(base, p)
}

fn parse_addr(s: &str, path: &str, e: &mut ConfigErrors) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        e.push(path, format!("\"{s}\" is not an IP:port address"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn compile_listeners(raw: &[RawListener], base: &Path, e: &mut ConfigErrors) -> Vec<Listener> {
    let mut names = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, l)| {
            let path = format!("listeners[{i}]");
            if !names.insert(l.name.as_str()) {
                e.push(
                    format!("{path}.name"),
                    format!("duplicate listener name \"{}\"", l.name),
                );
            }
            Listener {
                name: Arc::from(l.name.as_str()),
                address: parse_addr(&l.address, &format!("{path}.address"), e),
                tls: l
                    .tls
                    .as_ref()
                    .map(|t| compile_listener_tls(t, &format!("{path}.tls"), base, e)),
            }
        })
        .collect()
}

fn compile_listener_tls(
    t: &RawListenerTls,
    path: &str,
    base: &Path,
    e: &mut ConfigErrors,
) -> ListenerTls {
    let tls13_only = match t.min_version.as_str() {
        "1.2" => false,
        "1.3" => true,
        other => {
            e.push(
                format!("{path}.min_version"),
                format!("\"{other}\": must be \"1.2\" or \"1.3\" (older versions are not offered)"),
            );
            false
        }
    };
    if t.certificates.is_empty() {
        e.push(
            format!("{path}.certificates"),
            "at least one certificate is required",
        );
    }
    let certificates = t
        .certificates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let p = format!("{path}.certificates[{i}]");
            let cert_file = resolve(base, &c.cert_file);
            let key_file = resolve(base, &c.key_file);
            let chain = load_certs(&cert_file, &format!("{p}.cert_file"), e);
            let key = match PrivateKeyDer::from_pem_file(&key_file) {
                Ok(k) => Some(k),
                Err(err) => {
                    e.push(
                        format!("{p}.key_file"),
                        format!(
                            "cannot load a private key from {}: {err}",
                            key_file.display()
                        ),
                    );
                    None
                }
            };
            let server_names = c
                .server_names
                .iter()
                .enumerate()
                .filter_map(|(j, n)| {
                    let n = n.trim().to_ascii_lowercase();
                    let bare = n.strip_prefix("*.").unwrap_or(&n);
                    if bare.is_empty() || !bare.split('.').all(valid_label) {
                        e.push(
                            format!("{p}.server_names[{j}]"),
                            format!("\"{n}\" is not a DNS name"),
                        );
                        None
                    } else {
                        Some(n)
                    }
                })
                .collect();
            match (chain, key) {
                (Some(chain), Some(key)) => Some(Certificate {
                    cert_file,
                    chain,
                    key,
                    server_names,
                }),
                _ => None,
            }
        })
        .collect();
    let client_auth = t.client_auth.as_ref().and_then(|c| {
        let cp = format!("{path}.client_auth.ca_file");
        let roots = load_certs(&resolve(base, &c.ca_file), &cp, e);
        let mut spiffe_bundles = Vec::with_capacity(c.spiffe_bundles.len());
        for (domain, file) in &c.spiffe_bundles {
            let bp = format!("{path}.client_auth.spiffe_bundles.{domain}");
            // A trust domain as SPIFFE ids spell it: lowercase, no path.
            if portcullis_core::SpiffeId::parse(&format!("spiffe://{domain}"))
                .is_none_or(|id| id.trust_domain != *domain)
            {
                e.push(
                    &bp,
                    "not a SPIFFE trust domain (lowercase letters, digits, `.`, `-`, `_`)",
                );
                continue;
            }
            if let Some(certs) = load_certs(&resolve(base, file), &bp, e) {
                spiffe_bundles.push((domain.clone(), certs));
            }
        }
        Some(ClientAuth {
            required: c.mode == ClientAuthMode::Required,
            roots: roots?,
            spiffe_bundles,
        })
    });
    ListenerTls {
        certificates,
        tls13_only,
        client_auth,
    }
}

fn valid_label(l: &str) -> bool {
    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn load_certs(
    file: &Path,
    path: &str,
    e: &mut ConfigErrors,
) -> Option<Vec<CertificateDer<'static>>> {
    match CertificateDer::pem_file_iter(file).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
        Ok(v) if !v.is_empty() => Some(v),
        Ok(_) => {
            e.push(path, format!("{} holds no certificate", file.display()));
            None
        }
        Err(err) => {
            e.push(
                path,
                format!("cannot load certificates from {}: {err}", file.display()),
            );
            None
        }
    }
}

fn compile_admin(a: &RawAdmin, base: &Path, e: &mut ConfigErrors) -> Admin {
    let address = parse_addr(&a.address, "admin.address", e);
    let token = a
        .token
        .as_ref()
        .and_then(|t| t.resolve("admin.token", base, e))
        .map(portcullis_core::Secret::new);
    let read_token = a
        .read_token
        .as_ref()
        .and_then(|t| t.resolve("admin.read_token", base, e))
        .map(portcullis_core::Secret::new);
    if a.read_token.is_some() && a.token.is_none() {
        e.push(
            "admin.read_token",
            "a read-only token needs admin.token beside it (without one, the API on loopback \
             asks for no token at all)",
        );
    }
    if let (Some(t), Some(r)) = (&token, &read_token)
        && t.expose() == r.expose()
    {
        e.push("admin.read_token", "must differ from admin.token");
    }
    if a.enabled && !address.ip().is_loopback() && a.token.is_none() {
        e.push(
            "admin.address",
            format!(
                "{address} is not a loopback address: the admin API is only served beyond \
                 localhost when admin.token is set"
            ),
        );
    }
    Admin {
        enabled: a.enabled,
        address,
        token,
        read_token,
    }
}

fn compile_server(s: &RawServer, e: &mut ConfigErrors) -> Server {
    let request_id_header =
        HeaderName::from_bytes(s.request_id.header.as_bytes()).unwrap_or_else(|_| {
            e.push(
                "server.request_id.header",
                format!("\"{}\" is not a header name", s.request_id.header),
            );
            HeaderName::from_static("x-request-id")
        });
    // Zero would close every connection at its accept (the handshake's deadline is its start).
    let header_read_timeout =
        positive_duration(&s.header_read_timeout, "server.header_read_timeout", e);
    if s.http2_max_concurrent_streams == 0 {
        e.push(
            "server.http2_max_concurrent_streams",
            "must be greater than 0",
        );
    }
    // Every trusted address may name any client: a range that public clients connect from
    // would let them all choose the address every later step keys on.
    for (i, t) in s.trusted_proxies.iter().enumerate() {
        let Ok(n) = portcullis_ipfilter::parse_net(t) else {
            continue;
        };
        // Private IPv6 space (fc00::/7) may be trusted whole; public space in /32s at most.
        let ula = "fc00::/7"
            .parse::<ipnet::IpNet>()
            .is_ok_and(|u| u.contains(&n));
        let widest = match n {
            ipnet::IpNet::V4(_) => 8,
            ipnet::IpNet::V6(_) if ula => 7,
            ipnet::IpNet::V6(_) => 32,
        };
        if n.prefix_len() < widest {
            e.push(
                format!("server.trusted_proxies[{i}]"),
                format!(
                    "{n} is wider than any network of proxies (at most an IPv4 /8, an IPv6 /32, \
                     or fc00::/7): each trusted address may name any client, so list the \
                     proxies' own addresses"
                ),
            );
        }
    }
    Server {
        trusted_proxies: parse_nets(&s.trusted_proxies, "server.trusted_proxies", e),
        client_address_header: s.client_address_header,
        request_id_header,
        accept_request_id: s.request_id.accept_from,
        request_id_upstream: s.request_id.upstream,
        request_id_response: s.request_id.response,
        trace_context: s.trace_context,
        x_forwarded: s.forwarded_headers.x_forwarded,
        forwarded: s.forwarded_headers.forwarded,
        path_rules: PathRules {
            encoded_slash: match s.encoded_slash {
                RawEncodedSlash::Reject => EncodedSlash::Reject,
                RawEncodedSlash::Keep => EncodedSlash::Keep,
            },
            semicolons: match s.path_semicolons {
                RawSemicolons::Reject => Semicolons::Reject,
                RawSemicolons::Keep => Semicolons::Keep,
            },
        },
        method_override: s.method_override,
        limits: HeadLimits::compile(&s.limits, "server.limits", e),
        ip_filter: IpRules::compile(&s.ip_filter, "server.ip_filter", e),
        header_read_timeout,
        http2_max_concurrent_streams: s.http2_max_concurrent_streams,
        http2_max_resets_per_second: s.http2_max_resets_per_second,
        idle_timeout: positive_duration(&s.idle_timeout, "server.idle_timeout", e),
        send_timeout: positive_duration(&s.send_timeout, "server.send_timeout", e),
        send_min_bytes_per_second: s.send_min_bytes_per_second,
        body_read_timeout: positive_duration(&s.body_read_timeout, "server.body_read_timeout", e),
        body_min_bytes_per_second: s.body_min_bytes_per_second,
        max_connections: nonzero(s.max_connections, "server.max_connections", e),
        max_connections_per_ip: nonzero(
            s.max_connections_per_ip,
            "server.max_connections_per_ip",
            e,
        ),
        drain_timeout: compile_duration(&s.drain_timeout, "server.drain_timeout", e),
        stop_delay: compile_duration(&s.stop_delay, "server.stop_delay", e),
        abort_on_client_close: s.abort_on_client_close,
    }
}

fn nonzero(v: usize, path: &str, e: &mut ConfigErrors) -> usize {
    if v == 0 {
        e.push(path, "must be greater than 0");
    }
    v
}

/// A duration that must be greater than zero; one error at most per value.
fn positive_duration(s: &str, path: &str, e: &mut ConfigErrors) -> std::time::Duration {
    match portcullis_core::units::parse_duration(s) {
        Ok(d) if d.is_zero() => {
            e.push(path, "must be greater than 0");
            d
        }
        Ok(d) => d,
        Err(msg) => {
            e.push(path, msg);
            std::time::Duration::ZERO
        }
    }
}

fn compile_upstream(
    name: &str,
    u: &RawUpstream,
    path: &str,
    base: &Path,
    e: &mut ConfigErrors,
) -> Upstream {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        e.push(
            path,
            format!("upstream name \"{name}\" may only hold letters, digits, '-', '_' and '.'"),
        );
    }
    let targets: Vec<Target> = u
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| compile_target(t, &format!("{path}.targets[{i}]"), e))
        .collect();
    match u.kind {
        UpstreamKind::Proxy if u.targets.is_empty() => e.push(
            format!("{path}.targets"),
            "a proxy upstream needs at least one target",
        ),
        UpstreamKind::Echo if !u.targets.is_empty() => e.push(
            format!("{path}.targets"),
            "an echo upstream answers in process and takes no targets",
        ),
        UpstreamKind::TokenExchange if !u.targets.is_empty() => e.push(
            format!("{path}.targets"),
            "a token_exchange upstream answers in process and takes no targets",
        ),
        UpstreamKind::Static if !u.targets.is_empty() => e.push(
            format!("{path}.targets"),
            "a static upstream answers in process and takes no targets",
        ),
        _ => {}
    }
    if u.kind != UpstreamKind::Static && !u.responses.is_empty() {
        e.push(
            format!("{path}.responses"),
            "only a static upstream has canned responses",
        );
    }
    let static_responses = u
        .responses
        .iter()
        .enumerate()
        .filter_map(|(i, r)| compile_static(r, &format!("{path}.responses[{i}]"), e))
        .collect();
    let connect_timeout =
        positive_duration(&u.connect_timeout, &format!("{path}.connect_timeout"), e);
    let request_timeout =
        positive_duration(&u.request_timeout, &format!("{path}.request_timeout"), e);
    let read_timeout = positive_duration(&u.read_timeout, &format!("{path}.read_timeout"), e);
    let idle_timeout = compile_duration(&u.idle_timeout, &format!("{path}.idle_timeout"), e);
    if u.retries.attempts > 5 {
        e.push(format!("{path}.retries.attempts"), "at most 5 retries");
    }
    if u.retries.budget_percent > 100 {
        e.push(
            format!("{path}.retries.budget_percent"),
            "a percentage: 0 to 100",
        );
    }
    let on_status = u
        .retries
        .on_status
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match StatusCode::from_u16(*s) {
            Ok(sc) if sc.is_server_error() => Some(sc),
            _ => {
                e.push(
                    format!("{path}.retries.on_status[{i}]"),
                    format!("{s} is not a 5xx status"),
                );
                None
            }
        })
        .collect();
    let health_check = u.health_check.as_ref().map(|h| {
        let hp = format!("{path}.health_check");
        if !h.path.starts_with('/') || h.path.parse::<http::uri::PathAndQuery>().is_err() {
            e.push(
                format!("{hp}.path"),
                format!("\"{}\" is not an absolute path", h.path),
            );
        }
        let interval = positive_duration(&h.interval, &format!("{hp}.interval"), e);
        let timeout = positive_duration(&h.timeout, &format!("{hp}.timeout"), e);
        if h.healthy_threshold == 0 {
            e.push(format!("{hp}.healthy_threshold"), "must be greater than 0");
        }
        if h.unhealthy_threshold == 0 {
            e.push(
                format!("{hp}.unhealthy_threshold"),
                "must be greater than 0",
            );
        }
        // A host name or address with an optional port, as a `Host` field and an HTTP/2
        // `:authority` take it: no user information, nothing else.
        if let Some(host) = &h.host
            && (host.contains('@')
                || host.parse::<http::uri::Authority>().is_err()
                || http::HeaderValue::from_str(host).is_err())
        {
            e.push(
                format!("{hp}.host"),
                format!("\"{host}\" is not a host name or address with an optional port"),
            );
        }
        HealthCheck {
            path: h.path.clone(),
            interval,
            timeout,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
            host: h.host.clone(),
        }
    });
    if u.kind == UpstreamKind::TokenExchange && u.health_check.is_some() {
        e.push(
            format!("{path}.health_check"),
            "a token_exchange upstream has nothing to check",
        );
    }
    if matches!(u.kind, UpstreamKind::Echo | UpstreamKind::Static) && u.health_check.is_some() {
        e.push(
            format!("{path}.health_check"),
            "an in-process upstream has nothing to check",
        );
    }
    if u.passive_health.max_ejection_percent > 100 {
        e.push(
            format!("{path}.passive_health.max_ejection_percent"),
            "must be between 0 and 100",
        );
    }
    let passive_health = PassiveHealth {
        consecutive_failures: u.passive_health.consecutive_failures,
        ejection_time: compile_duration(
            &u.passive_health.ejection_time,
            &format!("{path}.passive_health.ejection_time"),
            e,
        ),
        max_ejection_percent: u.passive_health.max_ejection_percent.min(100),
    };
    let tls_roots = u
        .tls
        .ca_file
        .as_ref()
        .and_then(|f| load_certs(&resolve(base, f), &format!("{path}.tls.ca_file"), e));
    Upstream {
        name: Arc::from(name),
        kind: u.kind,
        targets,
        protocol: u.protocol,
        balance: u.balance,
        connect_timeout,
        request_timeout,
        read_timeout,
        idle_timeout,
        max_idle_per_target: u.max_idle_per_target,
        retries: Retries {
            attempts: u.retries.attempts.min(5),
            on_status,
            budget_percent: u.retries.budget_percent.min(100),
            min_concurrent: u.retries.min_concurrent,
        },
        health_check,
        passive_health,
        tls_roots,
        host_header: u.host_header,
        static_responses,
        adaptive_concurrency: u.adaptive_concurrency.as_ref().map(|a| {
            let ap = format!("{path}.adaptive_concurrency");
            if a.min == 0 || a.min > a.max {
                e.push(&ap, "min must be at least 1 and at most max");
            }
            if a.initial < a.min || a.initial > a.max {
                e.push(format!("{ap}.initial"), "between min and max");
            }
            if u.kind != UpstreamKind::Proxy {
                e.push(&ap, "only for proxy upstreams");
            }
            Arc::new(portcullis_ratelimit::adaptive::ConcurrencyLimiter::new(
                a.min, a.max, a.initial,
            ))
        }),
    }
}

fn compile_target(t: &RawTarget, path: &str, e: &mut ConfigErrors) -> Option<Target> {
    let url = t.url();
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(_) => {
            e.push(path, format!("\"{url}\" is not a URL"));
            return None;
        }
    };
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            e.push(path, format!("\"{url}\": the scheme must be http or https"));
            return None;
        }
    };
    let Some(authority) = uri.authority().cloned() else {
        e.push(path, format!("\"{url}\" has no host"));
        return None;
    };
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        e.push(
            path,
            format!("\"{url}\": a target is scheme://host:port, without path or query"),
        );
        return None;
    }
    if authority.as_str().contains('@') {
        e.push(
            path,
            format!("\"{url}\": credentials in a target URL are not supported"),
        );
        return None;
    }
    if t.weight() == 0 {
        e.push(format!("{path}.weight"), "must be greater than 0");
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = authority.host();
    let authority_s = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let base: Uri = match format!("{}://{authority_s}", if tls { "https" } else { "http" }).parse()
    {
        Ok(b) => b,
        Err(_) => {
            e.push(path, format!("\"{url}\" is not a URL"));
            return None;
        }
    };
    Some(Target {
        base,
        tls,
        authority: authority_s,
        weight: t.weight().max(1),
    })
}

fn header_name(s: &str, path: &str, e: &mut ConfigErrors) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.as_bytes()) {
        Ok(h) if FORBIDDEN_HEADER_OPS.contains(&h.as_str()) => {
            e.push(
                path,
                format!("\"{s}\" is managed by the gateway and cannot be changed by a route"),
            );
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            e.push(path, format!("\"{s}\" is not a header name"));
            None
        }
    }
}

fn compile_header_ops(
    raw: &RawHeaderOps,
    path: &str,
    base_dir: &Path,
    e: &mut ConfigErrors,
) -> HeaderOps {
    let pairs = |m: &std::collections::BTreeMap<String, RawSecretOrString>,
                 key: &str,
                 e: &mut ConfigErrors| {
        m.iter()
            .filter_map(|(k, v)| {
                let p = format!("{path}.{key}.{k}");
                let name = header_name(k, &p, e)?;
                let value = v.resolve(&p, base_dir, e)?;
                match HeaderValue::from_str(&value) {
                    Ok(mut value) => {
                        // Not shown by `Debug`; never indexed by HPACK.
                        value.set_sensitive(
                            crate::raw::is_credential_header(k)
                                || matches!(v, RawSecretOrString::Secret(_)),
                        );
                        Some((name, value))
                    }
                    Err(_) => {
                        e.push(p, "the value holds characters not allowed in a header");
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    };
    HeaderOps {
        set: pairs(&raw.set, "set", e),
        add: pairs(&raw.add, "add", e),
        remove: raw
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, h)| header_name(h, &format!("{path}.remove[{i}]"), e))
            .collect(),
        rename: raw
            .rename
            .iter()
            .filter_map(|(from, to)| {
                let p = format!("{path}.rename.{from}");
                Some((header_name(from, &p, e)?, header_name(to, &p, e)?))
            })
            .collect(),
    }
}

/// Parses `/orders/{id}/items` into segments; `None` when the path has no `{`.
pub fn parse_template(t: &str, path: &str, e: &mut ConfigErrors) -> Option<Vec<Segment>> {
    if !t.contains('{') && !t.contains('}') {
        return None;
    }
    let mut seen = HashSet::new();
    let segs = t
        .split('/')
        .skip(1)
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    e.push(
                        path,
                        format!("\"{{{name}}}\": a parameter name is letters, digits and '_'"),
                    );
                } else if !seen.insert(name.to_string()) {
                    e.push(path, format!("parameter \"{name}\" appears twice"));
                }
                Segment::Param(Arc::from(name))
            } else {
                if s.contains('{') || s.contains('}') {
                    e.push(
                        path,
                        format!("\"{s}\": a parameter must be a whole segment, like {{id}}"),
                    );
                }
                Segment::Literal(s.to_string())
            }
        })
        .collect();
    Some(segs)
}

/// A template parameter (`{id}`): a whole segment between braces, with no other brace in it.
/// Whether its name is a valid one is [`parse_template`]'s to say.
fn is_param_segment(s: &str) -> bool {
    s.strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .is_some_and(|name| !name.is_empty() && !name.contains(['{', '}']))
}

/// A route path must be in the form requests are matched in (their normal form, see
/// `portcullis_core::path`): one written otherwise could never match. When it has a normal
/// form, the error says how to write it (`/café` → `/caf%C3%A9`, `/items%3Apurge` →
/// `/items:purge`). The normaliser that puts request paths in normal form decides.
///
/// A template's parameters are not text of the path: the normaliser would encode their braces.
/// Each is checked as a placeholder it leaves as it is (`%7B0%7D`: one segment, neither empty
/// nor a dot segment), put back in the normal form the error gives.
fn check_path_syntax(p: &str, rules: PathRules, path: &str, e: &mut ConfigErrors) -> bool {
    if !p.starts_with('/') {
        e.push(path, format!("\"{p}\" must start with '/'"));
        return false;
    }
    if p.contains(['?', '#']) {
        e.push(
            path,
            format!("\"{p}\" holds '?' or '#': a route matches the path only, not the query"),
        );
        return false;
    }
    let params: Vec<&str> = p.split('/').filter(|s| is_param_segment(s)).collect();
    let checked = if params.is_empty() {
        Cow::Borrowed(p)
    } else {
        let mut n = 0;
        let segs: Vec<Cow<'_, str>> = p
            .split('/')
            .map(|s| {
                if is_param_segment(s) {
                    n += 1;
                    Cow::Owned(format!("%7B{}%7D", n - 1))
                } else {
                    Cow::Borrowed(s)
                }
            })
            .collect();
        Cow::Owned(segs.join("/"))
    };
    match portcullis_core::path::normalize_path_with(&checked, rules) {
        Ok(None) => true,
        Ok(Some(normal)) => {
            let normal = if params.is_empty() {
                normal
            } else {
                let segs: Vec<&str> = normal
                    .split('/')
                    .map(|s| {
                        s.strip_prefix("%7B")
                            .and_then(|s| s.strip_suffix("%7D"))
                            .and_then(|i| i.parse::<usize>().ok())
                            .and_then(|i| params.get(i).copied())
                            .unwrap_or(s)
                    })
                    .collect();
                segs.join("/")
            };
            e.push(
                path,
                format!(
                    "\"{p}\" is not a normalised path: requests are matched in normal form (no \
                     //, dot segments, lower-case escapes, escapes of characters that need none \
                     — unreserved ones and : @ ! $ & ' ( ) * , = — or raw characters that need \
                     one — characters outside ASCII, \" {{ }} | ^ [ ] and the like); write \
                     \"{normal}\""
                ),
            );
            false
        }
        Err(why) => {
            e.push(path, format!("\"{p}\" can never match: {}", why.detail()));
            false
        }
    }
}

/// What routes are compiled against: the gateway-wide sections.
struct Sections<'a> {
    /// Listener names.
    listeners: &'a [&'a str],
    upstreams: &'a HashMap<String, usize>,
    server: &'a Server,
    auth: &'a AuthSettings,
    authz: &'a portcullis_authz::AuthzSettings,
    rate_limits: &'a portcullis_ratelimit::RateLimitSettings,
    waf: &'a portcullis_waf::WafSettings,
    /// The gateway-wide settings routes override key by key.
    security_headers: &'a SecurityHeaders,
    errors: &'a ErrorPolicy,
    base_dir: &'a Path,
}

/// A route group defined by an OpenAPI document: one route per operation, each a template
/// under the group's prefix, sharing every other setting of the group. Returns the files the
/// document is made of.
fn expand_openapi(
    r: &RawRoute,
    o: &RawOpenApi,
    path: &str,
    sections: &Sections<'_>,
    routes: &mut Vec<Route>,
    e: &mut ConfigErrors,
) -> Vec<PathBuf> {
    let op_path = format!("{path}.openapi");
    if r.matcher.path.is_some() {
        e.push(
            format!("{path}.match.path"),
            "a route with openapi takes its paths from the document: use match.prefix (the base path)",
        );
    }
    if !r.matcher.methods.is_empty() {
        e.push(
            format!("{path}.match.methods"),
            "a route with openapi takes its methods from the document",
        );
    }
    if r.rewrite.as_ref().is_some_and(|rw| rw.template.is_some()) {
        e.push(
            format!("{path}.rewrite.template"),
            "a route with openapi can only rewrite its prefix (replace_prefix)",
        );
    }
    let Some(contract) = portcullis_contract::config::compile(o, sections.base_dir, &op_path, e)
    else {
        // Compile the rest anyway, so that every error is reported at once.
        let _ = compile_route(r, path, sections, &[], e);
        return Vec::new();
    };
    let mut params: Vec<Arc<str>> = Vec::new();
    for op in &contract.operations {
        for p in &op.def.parameters {
            if p.location == portcullis_contract::model::In::Path
                && !params.iter().any(|n| **n == *p.name)
            {
                params.push(Arc::from(p.name.as_str()));
            }
        }
    }
    let base = compile_route(r, path, sections, &params, e);
    let mut unmet = Unmet::default();
    let prefix = match &base.path {
        PathMatch::Prefix(p) => p.clone(),
        _ => String::new(),
    };
    let new_prefix = match &base.rewrite {
        Some(Rewrite::ReplacePrefix(p)) => Some(p.clone()),
        _ => None,
    };
    for op in &contract.operations {
        let full = format!("{prefix}{}", op.def.path);
        // Where `;` in paths is refused, an operation that needs one could never be called.
        let refused = sections.server.path_rules.semicolons == Semicolons::Reject;
        // Told once: such a path is not also said to be one that can never match.
        let semicolon_told = refused && op.def.path.contains(';');
        if refused {
            let matrix = op.def.parameters.iter().find(|p| {
                p.location == portcullis_contract::model::In::Path
                    && p.style == portcullis_contract::model::Style::Matrix
            });
            if semicolon_told || matrix.is_some() {
                e.push(
                    format!("{op_path}.spec"),
                    format!(
                        "{} {}: {} needs `;` in request paths, which are refused: set \
                         server.path_semicolons: keep",
                        op.def.method,
                        op.def.path,
                        match matrix {
                            Some(p) => format!("path parameter {} in matrix style", p.name),
                            None => "its path".to_string(),
                        }
                    ),
                );
            }
        }
        let mut scratch = ConfigErrors::new();
        let segs = parse_template(&full, "", &mut scratch);
        // The operation's path is matched as written under the prefix: one not in normal form
        // would never match, its requests falling to a broader route. The prefix is checked
        // as `match.prefix`, and a prefix in normal form (kept without a trailing slash)
        // followed by a path in normal form is in normal form: the operation's own path is
        // checked, so that the error gives the spelling to write in the document.
        if scratch.is_empty() && !semicolon_told {
            check_path_syntax(&op.def.path, sections.server.path_rules, "", &mut scratch);
        }
        for err in scratch.iter() {
            e.push(
                format!("{op_path}.spec"),
                format!("{}#{}: {}", o.spec, op.def.pointer, err.message),
            );
        }
        let Some(segs) = segs else {
            let mut route = base.clone();
            route.waf.api.allow_arrays(repeated_query_arrays(&op.def));
            route.path = PathMatch::Exact(full.clone());
            route.methods = Some(vec![op.def.method.clone()]);
            route.rewrite = new_prefix.as_ref().map(|p| {
                Rewrite::Template(vec![TemplatePart::Literal(format!("{p}{}", op.def.path))])
            });
            route.contract = Some(op.clone());
            route.authz.openapi = document_security(&op.def, &route.auth, o, &mut unmet);
            routes.push(route);
            continue;
        };
        let rewrite = new_prefix.as_ref().map(|p| {
            let mut parts = Vec::new();
            let mut literal = p.clone();
            for seg in segs.iter().skip(segment_count(&prefix)) {
                literal.push('/');
                match seg {
                    Segment::Literal(l) => literal.push_str(l),
                    Segment::Param(n) => {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                        parts.push(TemplatePart::Param(n.clone()));
                    }
                }
            }
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(literal));
            }
            Rewrite::Template(parts)
        });
        let mut route = base.clone();
        // Arrays the document declares as repeated query parameters are not parameter
        // pollution for the WAF.
        route.waf.api.allow_arrays(repeated_query_arrays(&op.def));
        route.path = PathMatch::Template(segs);
        route.methods = Some(vec![op.def.method.clone()]);
        route.rewrite = rewrite;
        route.contract = Some(op.clone());
        route.authz.openapi = document_security(&op.def, &route.auth, o, &mut unmet);
        routes.push(route);
    }
    report_unmet(&unmet, o, path, &op_path, e);
    contract.document.files
}

/// Operations whose security requirements the route cannot meet.
#[derive(Default)]
struct Unmet {
    /// On an anonymous route: the operations that require credentials.
    anonymous: Vec<String>,
    /// On an authenticated one: `file#pointer` and why no requirement can be met.
    unmeetable: Vec<(String, String)>,
}

/// The credentials that meet one security scheme.
fn scheme_methods(kind: &portcullis_contract::model::SchemeKind) -> &'static [AuthMethod] {
    use portcullis_contract::model::SchemeKind;
    match kind {
        SchemeKind::ApiKey => &[AuthMethod::ApiKey],
        SchemeKind::Bearer | SchemeKind::OAuth => &[AuthMethod::Jwt, AuthMethod::Introspection],
        SchemeKind::MutualTls => &[AuthMethod::Mtls],
        SchemeKind::Other(_) => &[],
    }
}

/// The authorization rule an operation's `security` makes on its route (`None` when it
/// requires nothing, or `openapi.security: ignore`). What the route cannot meet goes to
/// `unmet`.
fn document_security(
    op: &portcullis_contract::model::OperationDef,
    auth: &portcullis_authn::config::RouteAuth,
    o: &portcullis_contract::config::RawOpenApi,
    unmet: &mut Unmet,
) -> Option<Arc<portcullis_authz::config::DocumentSecurity>> {
    use portcullis_authn::config::Method as Accepted;
    use portcullis_authz::config::{DocumentSecurity, SecurityAlternative};
    use portcullis_authz::rules::{Group, Requirement};
    use portcullis_contract::config::SecurityPolicy;
    use portcullis_contract::model::SchemeKind;
    if o.security == SecurityPolicy::Ignore {
        return None;
    }
    let required = op.security.as_ref()?;
    if auth.methods.is_empty() {
        unmet.anonymous.push(op.id.clone());
        return None;
    }
    let route_methods: Vec<AuthMethod> = auth
        .methods
        .iter()
        .map(|m| match m {
            Accepted::Jwt(_) => AuthMethod::Jwt,
            Accepted::Introspection(_) => AuthMethod::Introspection,
            Accepted::ApiKey => AuthMethod::ApiKey,
            Accepted::Mtls => AuthMethod::Mtls,
        })
        .collect();
    let mut alternatives = Vec::new();
    let mut why = Vec::new();
    for schemes in required {
        let names: Vec<&str> = schemes.iter().map(|s| s.name.as_str()).collect();
        let label = names.join(" + ");
        let mut methods = route_methods.clone();
        let (mut scopes, mut roles) = (Vec::new(), Vec::new());
        for s in schemes {
            if let SchemeKind::Other(what) = &s.kind {
                why.push(format!(
                    "{}: {what} is not a credential the gateway verifies",
                    s.name
                ));
            }
            let accepted = scheme_methods(&s.kind);
            methods.retain(|m| accepted.contains(m));
            let into = if s.kind == SchemeKind::OAuth {
                &mut scopes
            } else {
                &mut roles
            };
            for v in &s.values {
                if !into.contains(v) {
                    into.push(v.clone());
                }
            }
        }
        if methods.is_empty() {
            if !schemes
                .iter()
                .any(|s| matches!(s.kind, SchemeKind::Other(_)))
            {
                why.push(format!("{label}: needs a credential the route's auth.methods do not accept, or several at once"));
            }
            continue;
        }
        let group = |all_of: Vec<String>| {
            (!all_of.is_empty()).then(|| Group {
                any_of: Vec::new(),
                all_of,
            })
        };
        alternatives.push(SecurityAlternative {
            schemes: label,
            methods,
            requirement: Requirement {
                scopes: group(scopes),
                roles: group(roles),
            },
        });
    }
    if alternatives.is_empty() {
        unmet.unmeetable.push((op.pointer.clone(), why.join("; ")));
        return None;
    }
    Some(Arc::new(DocumentSecurity {
        operation: op.id.clone(),
        alternatives,
    }))
}

/// One error per route group for the operations whose security the route cannot meet.
fn report_unmet(
    unmet: &Unmet,
    o: &portcullis_contract::config::RawOpenApi,
    path: &str,
    op_path: &str,
    e: &mut ConfigErrors,
) {
    const SHOWN: usize = 5;
    if !unmet.anonymous.is_empty() {
        let mut ids = unmet.anonymous[..unmet.anonymous.len().min(SHOWN)].join(", ");
        if unmet.anonymous.len() > SHOWN {
            ids.push_str(&format!(" and {} more", unmet.anonymous.len() - SHOWN));
        }
        e.push(
            format!("{path}.auth"),
            format!(
                "the document's operations {ids} require credentials (their security), but the \
                 route is anonymous: give it auth.methods, or set openapi.security: ignore"
            ),
        );
    }
    for (pointer, why) in &unmet.unmeetable {
        e.push(
            format!("{op_path}.spec"),
            format!(
                "{}#{pointer}: no security requirement of the operation can be met on this \
                 route ({why}); or set openapi.security: ignore",
                o.spec
            ),
        );
    }
}

/// The query parameters an operation declares as arrays sent as repeated keys (`ids=1&ids=2`):
/// not parameter pollution for the WAF.
fn repeated_query_arrays(op: &portcullis_contract::model::OperationDef) -> Vec<String> {
    use portcullis_contract::model::{In, Shape, Style};
    op.parameters
        .iter()
        .filter(|p| {
            p.location == In::Query
                && p.style == Style::Form
                && p.explode
                && matches!(p.shape, Shape::Array(_))
        })
        .map(|p| p.name.clone())
        .collect()
}

/// How many `/`-separated segments a prefix has (`""` and `/` have none).
fn segment_count(prefix: &str) -> usize {
    prefix.split('/').filter(|s| !s.is_empty()).count()
}

fn compile_route(
    r: &RawRoute,
    path: &str,
    sections: &Sections<'_>,
    group_params: &[Arc<str>],
    e: &mut ConfigErrors,
) -> Route {
    let Sections {
        upstreams,
        server,
        auth,
        authz,
        rate_limits,
        waf,
        ..
    } = *sections;
    let upstream = upstreams.get(&r.upstream).copied().unwrap_or_else(|| {
        let mut known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        known.sort_unstable();
        e.push(
            format!("{path}.upstream"),
            format!(
                "unknown upstream \"{}\" (known: {})",
                r.upstream,
                known.join(", ")
            ),
        );
        0
    });
    let m = &r.matcher;
    let mpath = format!("{path}.match");
    let listeners = m
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            if sections.listeners.contains(&l.as_str()) {
                Some(Arc::from(l.as_str()))
            } else {
                e.push(
                    format!("{mpath}.listeners[{i}]"),
                    format!(
                        "unknown listener \"{l}\" (known: {})",
                        sections.listeners.join(", ")
                    ),
                );
                None
            }
        })
        .collect();
    let hosts = m
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let h = h.trim().to_ascii_lowercase();
            // An IPv6 address, bracketed or not, is matched in the request's form: bracketed
            // and canonical (see `portcullis_core::normalized_host`).
            let v6 = h
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(&h);
            if let Ok(addr) = v6.parse::<std::net::Ipv6Addr>() {
                return Some(HostMatch::Exact(format!("[{addr}]")));
            }
            let (suffix, bare) = match h.strip_prefix("*.") {
                Some(b) => (true, b.to_string()),
                None => (false, h.clone()),
            };
            let ok = !bare.is_empty()
                && (bare.split('.').all(valid_label) || bare.parse::<std::net::Ipv4Addr>().is_ok());
            if !ok {
                e.push(
                    format!("{mpath}.hosts[{i}]"),
                    format!("\"{h}\" is not a host name or *.wildcard"),
                );
                return None;
            }
            Some(if suffix {
                HostMatch::Suffix(format!(".{bare}"))
            } else {
                HostMatch::Exact(bare)
            })
        })
        .collect();
    let pm = match (&m.path, &m.prefix) {
        (Some(p), None) => {
            let pp = format!("{mpath}.path");
            let before = e.len();
            let pm = match parse_template(p, &pp, e) {
                Some(segs) => PathMatch::Template(segs),
                None => PathMatch::Exact(p.clone()),
            };
            // A malformed template (`/files/{name}.json`) is told once, as such, not also
            // as a path whose braces want escapes.
            if e.len() == before {
                check_path_syntax(p, server.path_rules, &pp, e);
            }
            pm
        }
        (None, Some(p)) => {
            let pp = format!("{mpath}.prefix");
            if check_path_syntax(p, server.path_rules, &pp, e) && p.contains(['{', '}']) {
                e.push(
                    pp,
                    "a prefix cannot hold parameters; use path with a template",
                );
            }
            PathMatch::Prefix(p.trim_end_matches('/').to_string())
        }
        (Some(_), Some(_)) => {
            e.push(&mpath, "give either path or prefix, not both");
            PathMatch::Prefix(String::new())
        }
        (None, None) => {
            e.push(
                &mpath,
                "give path or prefix (use prefix: / to take every path)",
            );
            PathMatch::Prefix(String::new())
        }
    };
    let methods = if m.methods.is_empty() {
        None
    } else {
        Some(
            m.methods
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let up = s.to_ascii_uppercase();
                    match Method::from_bytes(up.as_bytes()) {
                        Ok(me) if up.bytes().all(|b| b.is_ascii_uppercase()) => Some(me),
                        _ => {
                            e.push(
                                format!("{mpath}.methods[{i}]"),
                                format!("\"{s}\" is not a method"),
                            );
                            None
                        }
                    }
                })
                .collect(),
        )
    };
    let rewrite = r.rewrite.as_ref().and_then(|rw| {
        let rp = format!("{path}.rewrite");
        match (&rw.replace_prefix, &rw.template) {
            (Some(p), None) => {
                if !matches!(pm, PathMatch::Prefix(_)) {
                    e.push(
                        format!("{rp}.replace_prefix"),
                        "needs a route matched by prefix",
                    );
                }
                if !p.is_empty() && !p.starts_with('/') {
                    e.push(
                        format!("{rp}.replace_prefix"),
                        format!("\"{p}\" must be empty or start with '/'"),
                    );
                }
                Some(Rewrite::ReplacePrefix(p.trim_end_matches('/').to_string()))
            }
            (None, Some(t)) => {
                let tp = format!("{rp}.template");
                let params: HashSet<&str> = match &pm {
                    PathMatch::Template(segs) => segs
                        .iter()
                        .filter_map(|s| match s {
                            Segment::Param(p) => Some(&**p),
                            Segment::Literal(_) => None,
                        })
                        .collect(),
                    _ => HashSet::new(),
                };
                Some(Rewrite::Template(parse_rewrite_template(
                    t, &params, &tp, e,
                )))
            }
            (Some(_), Some(_)) => {
                e.push(&rp, "give either replace_prefix or template, not both");
                None
            }
            (None, None) => {
                e.push(&rp, "give replace_prefix or template");
                None
            }
        }
    });
    let max_body_bytes = r
        .max_body_bytes
        .as_ref()
        .map(|s| s.compile(&format!("{path}.max_body_bytes"), e))
        .unwrap_or(server.limits.max_body_bytes);
    let timeout = r
        .timeout
        .as_ref()
        .map(|t| positive_duration(t, &format!("{path}.timeout"), e));
    let route_auth = portcullis_authn::config::compile_route(r.auth.as_ref(), auth, path, e);
    let params: Vec<Arc<str>> = match &pm {
        PathMatch::Template(segs) => segs
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n.clone()),
                Segment::Literal(_) => None,
            })
            .collect(),
        _ => group_params.to_vec(),
    };
    Route {
        name: Arc::from(r.name.as_str()),
        listeners,
        hosts,
        path: pm,
        methods,
        upstream,
        rewrite,
        request_headers: compile_header_ops(
            &r.request_headers,
            &format!("{path}.request_headers"),
            sections.base_dir,
            e,
        ),
        response_headers: compile_header_ops(
            &r.response_headers,
            &format!("{path}.response_headers"),
            sections.base_dir,
            e,
        ),
        max_body_bytes,
        ip_filter: IpRules::compile(&r.ip_filter, &format!("{path}.ip_filter"), e),
        timeout,
        auth: route_auth.clone(),
        authz: portcullis_authz::config::compile_route(
            r.authz.as_ref(),
            &portcullis_authz::config::RouteFacts {
                anonymous: route_auth.methods.is_empty(),
                params: &params,
            },
            authz,
            path,
            e,
        ),
        rate_limits: portcullis_ratelimit::config::compile_route(
            &r.rate_limits,
            rate_limits,
            path,
            e,
        ),
        waf: portcullis_waf::config::compile_route(r.waf.as_ref(), waf, path, e),
        contract: None,
        cors: r
            .cors
            .as_ref()
            .and_then(|c| portcullis_cors::compile(c, &format!("{path}.cors"), e))
            .map(Arc::new),
        security_headers: Arc::new(portcullis_response::compile_route(
            r.security_headers.as_ref(),
            sections.security_headers,
            &format!("{path}.security_headers"),
            e,
        )),
        errors: portcullis_response::compile_errors_route(
            r.errors.as_ref(),
            sections.errors,
            &format!("{path}.errors"),
            e,
        ),
        response_filter: r.response_filter.as_ref().and_then(|f| {
            portcullis_response::compile_response_filter(f, &format!("{path}.response_filter"), e)
        }),
        websocket: r
            .websocket
            .as_ref()
            .and_then(|w| portcullis_cors::compile_websocket(w, &format!("{path}.websocket"), e))
            .inspect(|w| {
                if w.max_message_bytes().is_none() && max_body_bytes == 0 {
                    e.push(
                        format!("{path}.websocket"),
                        "a client's messages are limited to the route's max_body_bytes, which is 0: set websocket.max_message_bytes",
                    );
                }
            })
            .map(Arc::new),
    }
}

fn compile_static(
    r: &RawStaticResponse,
    path: &str,
    e: &mut ConfigErrors,
) -> Option<StaticResponse> {
    let mp = format!("{path}.match");
    let Some((method, target)) = r.matcher.trim().split_once(' ') else {
        e.push(mp, "write `METHOD /path` (or `* /path`)");
        return None;
    };
    let method = match method {
        "*" => None,
        m => match Method::from_bytes(m.as_bytes()) {
            Ok(me) if m.bytes().all(|b| b.is_ascii_uppercase()) => Some(me),
            _ => {
                e.push(&mp, format!("\"{m}\" is not a method (or *)"));
                None
            }
        },
    };
    let target = target.trim();
    if !target.starts_with('/') {
        e.push(&mp, format!("\"{target}\" is not an absolute path"));
    }
    let pm = match parse_template(target, &mp, e) {
        Some(segs) => PathMatch::Template(segs),
        None => PathMatch::Exact(target.to_string()),
    };
    let status = match StatusCode::from_u16(r.status) {
        Ok(s) if s.as_u16() >= 200 => s,
        _ => {
            e.push(
                format!("{path}.status"),
                format!("{} is not a final status (200..=999)", r.status),
            );
            StatusCode::OK
        }
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in &r.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(val)) => {
                headers.append(n, val);
            }
            _ => e.push(
                format!("{path}.headers.{k}"),
                "not a valid header name and value",
            ),
        }
    }
    let body = match (&r.body, &r.json) {
        (Some(_), Some(_)) => {
            e.push(path, "give body or json, not both");
            bytes::Bytes::new()
        }
        (Some(b), None) => bytes::Bytes::from(b.clone()),
        (None, Some(j)) => {
            if !headers.contains_key(http::header::CONTENT_TYPE) {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            bytes::Bytes::from(serde_json::to_vec(j).unwrap_or_default())
        }
        (None, None) => bytes::Bytes::new(),
    };
    Some(StaticResponse {
        method,
        path: pm,
        status,
        headers,
        body,
    })
}

fn parse_rewrite_template(
    t: &str,
    params: &HashSet<&str>,
    path: &str,
    e: &mut ConfigErrors,
) -> Vec<TemplatePart> {
    if !t.starts_with('/') {
        e.push(path, format!("\"{t}\" must start with '/'"));
    }
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find('}') else {
            e.push(path, "unclosed '{'");
            return parts;
        };
        let name = &rest[open + 1..open + close];
        if !params.contains(name) {
            e.push(
                path,
                format!("\"{{{name}}}\" is not a parameter of the route's path template"),
            );
        }
        parts.push(TemplatePart::Param(Arc::from(name)));
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        e.push(path, "unmatched '}'");
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    parts
}

fn mtls_listener(raw: &RawConfig) -> bool {
    raw.listeners
        .iter()
        .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()))
}

/// Route header rules apply after the identity and authorization steps: renaming a field the
/// client sends into one the gateway vouches for — an identity header or a name stripped from
/// every request, a verified tenant header or a policy decision's (`authz_owned`: removed from
/// every request, set on some routes), the route's gateway-signed token's header — would hand
/// the client's value on as verified (on a route, or for a principal, where the gateway sets
/// none). Names are compared as backends read them (`_` for `-`, any case).
fn check_renames_into_vouched_headers(
    route: &Route,
    auth: &AuthSettings,
    authz_owned: &[HeaderName],
    path: &str,
    e: &mut ConfigErrors,
) {
    let token = route
        .auth
        .internal_audience
        .as_ref()
        .map(|_| &auth.internal_token.header);
    for (from, to) in &route.request_headers.rename {
        let vouched = auth
            .identity
            .strip
            .iter()
            .chain(authz_owned)
            .chain(token)
            .any(|v| {
                portcullis_core::same_name_folded(to.as_str().as_bytes(), v.as_str().as_bytes())
            });
        if vouched {
            e.push(
                format!("{path}.request_headers.rename.{from}"),
                format!(
                    "{to} is a header the gateway vouches for (the verified identity, a tenant, \
                     a policy decision's or the gateway's token, or a name stripped from every \
                     request): a client's {from} would pass for it"
                ),
            );
        }
    }
}

/// A route to the token endpoint needs the `token_exchange` section, takes POST, and is
/// anonymous: the endpoint authenticates its clients itself (a route credential would take
/// the `Authorization` header `client_secret_basic` needs). It takes client secrets and tokens,
/// so no listener it is served on may carry them in cleartext (RFC 6749 §3.2): every one is
/// TLS, bound to loopback, or behind a TLS terminator the gateway trusts.
fn check_token_exchange_route(
    route: &Route,
    (upstreams, listeners, server): (&[Upstream], &[Listener], &Server),
    configured: bool,
    path: &str,
    e: &mut ConfigErrors,
) {
    if upstreams
        .get(route.upstream)
        .is_none_or(|u| u.kind != UpstreamKind::TokenExchange)
    {
        return;
    }
    if !configured {
        e.push(
            format!("{path}.upstream"),
            "a token_exchange upstream needs the token_exchange section",
        );
    }
    if !route.auth.methods.is_empty() {
        e.push(
            format!("{path}.auth"),
            "the token endpoint authenticates its clients itself: write `auth: {anonymous: true}`",
        );
    }
    if route
        .methods
        .as_ref()
        .is_some_and(|m| !m.contains(&Method::POST))
    {
        e.push(
            format!("{path}.match.methods"),
            "the token endpoint takes POST",
        );
    }
    if server.trusted_proxies.is_empty() {
        for l in listeners.iter().filter(|l| {
            l.tls.is_none()
                && !l.address.ip().is_loopback()
                && (route.listeners.is_empty() || route.listeners.contains(&l.name))
        }) {
            e.push(
                format!("{path}.upstream"),
                format!(
                    "the token endpoint would take client secrets and tokens in cleartext on \
                     listener {} ({}): give that listener TLS, keep the route off it \
                     (match.listeners), or list the TLS terminator in front of it in \
                     server.trusted_proxies",
                    l.name, l.address
                ),
            );
        }
    }
}
