//! # portcullis-ipfilter
//!
//! Client-address allow and deny lists (IPv4 and IPv6 CIDRs), gateway-wide and per route.
//!
//! * **Takes**: the client address resolved by the trusted-proxy step ([`RequestCtx::client_ip`]).
//! * **Rejects**: `403 ip_denied` when the address is on a deny list, or when an allow list is
//!   set and the address is not on it.
//! * **Invariants**: deny wins over allow; an empty allow list means "everyone"; IPv4-mapped
//!   IPv6 addresses (`::ffff:a.b.c.d`) are checked as the IPv4 address they carry, so a v4 deny
//!   entry cannot be sidestepped through a dual-stack socket.
//!
//! Two steps come from this crate: [`IpFilterStage::global`] runs before routing (a denied
//! client learns nothing about the route table), [`IpFilterStage::per_route`] right after it.
//! The global one also refuses banned addresses (`403 ip_banned`, [`bans`]).

#![forbid(unsafe_code)]

pub mod bans;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use portcullis_core::{
    ConfigErrors, GatewayRequest, RejectReason, Rejection, RequestCtx, Stage, StageId, Step,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Raw configuration: lists of addresses or CIDRs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawIpFilter {
    /// Only these addresses/CIDRs may call. Empty: everyone (subject to `deny`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// These addresses/CIDRs are refused. Deny wins over allow.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Compiled lists.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

pub use portcullis_core::addr::parse_net;

/// Parses a list of CIDRs, collecting an error per bad entry at `path[i]`.
pub fn parse_nets(list: &[String], path: &str, errors: &mut ConfigErrors) -> Vec<IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| match parse_net(s) {
            Ok(n) => Some(n),
            Err(e) => {
                errors.push(format!("{path}[{i}]"), e);
                None
            }
        })
        .collect()
}

/// Folds IPv4-mapped IPv6 addresses to IPv4.
pub use portcullis_core::addr::canonical;

impl IpRules {
    pub fn compile(raw: &RawIpFilter, path: &str, errors: &mut ConfigErrors) -> IpRules {
        IpRules {
            allow: parse_nets(&raw.allow, &format!("{path}.allow"), errors),
            deny: parse_nets(&raw.deny, &format!("{path}.deny"), errors),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// `Err(detail)` when the address must be refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err("the client address is on a deny list");
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Err("the client address is not on the allow list");
        }
        Ok(())
    }
}

/// The IP filter step.
pub struct IpFilterStage {
    scope: Scope,
    /// The global step's bans.
    bans: Option<(Arc<bans::BanList>, Arc<bans::BanRules>)>,
}

enum Scope {
    Global(IpRules),
    /// Indexed by route id; an empty rule set lets everyone through.
    PerRoute(Vec<IpRules>),
}

impl IpFilterStage {
    pub const GLOBAL_ID: StageId = StageId("ip_filter");
    pub const ROUTE_ID: StageId = StageId("route_ip_filter");

    pub fn global(rules: IpRules) -> Self {
        IpFilterStage {
            scope: Scope::Global(rules),
            bans: None,
        }
    }

    /// The global step, also refusing the addresses `list` holds banned under `rules` (by a
    /// rule, or by hand through the admin API: checked even without rules).
    pub fn global_with_bans(
        rules: IpRules,
        list: Arc<bans::BanList>,
        ban_rules: Arc<bans::BanRules>,
    ) -> Self {
        IpFilterStage {
            scope: Scope::Global(rules),
            bans: Some((list, ban_rules)),
        }
    }

    pub fn per_route(rules: Vec<IpRules>) -> Self {
        IpFilterStage {
            scope: Scope::PerRoute(rules),
            bans: None,
        }
    }

    fn rules_for(&self, ctx: &RequestCtx) -> Option<&IpRules> {
        match &self.scope {
            Scope::Global(r) => Some(r),
            Scope::PerRoute(v) => ctx.route_id().and_then(|id| v.get(id.0)),
        }
    }
}

impl Stage for IpFilterStage {
    fn id(&self) -> StageId {
        match self.scope {
            Scope::Global(_) => Self::GLOBAL_ID,
            Scope::PerRoute(_) => Self::ROUTE_ID,
        }
    }

    fn on_request<'a>(&'a self, _req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        if let Some(Err(detail)) = self.rules_for(ctx).map(|r| r.check(ctx.client_ip)) {
            return Step::reject(Rejection::new(RejectReason::IpDenied, detail));
        }
        if let Some((list, rules)) = &self.bans
            && let Some(left) = list.banned(rules, ctx.client_ip, ctx.received)
        {
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Step::reject(
                Rejection::new(
                    RejectReason::IpBanned,
                    "the client address is banned for a while after too many refused requests",
                )
                .with_header(http::header::RETRY_AFTER, http::HeaderValue::from(secs)),
            );
        }
        Step::CONTINUE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        let raw = RawIpFilter {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        let mut e = ConfigErrors::new();
        let r = IpRules::compile(&raw, "ip_filter", &mut e);
        assert!(e.is_empty(), "{e}");
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_over_allow() {
        let r = rules(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(r.check(ip("10.2.3.4")).is_ok());
        assert!(r.check(ip("10.1.3.4")).is_err());
        assert!(r.check(ip("192.168.1.1")).is_err());
    }

    #[test]
    fn empty_allow_means_everyone() {
        let r = rules(&[], &["2001:db8::/32"]);
        assert!(r.check(ip("192.0.2.1")).is_ok());
        assert!(r.check(ip("2001:db8::1")).is_err());
        assert!(r.check(ip("2001:db9::1")).is_ok());
    }

    #[test]
    fn v4_mapped_v6_is_checked_as_v4() {
        let r = rules(&[], &["203.0.113.7"]);
        assert!(r.check(ip("::ffff:203.0.113.7")).is_err());
        // Entries written in the mapped form (as a dual-stack listener reports IPv4 peers)
        // are their IPv4 networks: they match.
        let r = rules(&[], &["::ffff:203.0.113.7", "::ffff:198.51.100.0/120"]);
        for a in ["203.0.113.7", "::ffff:203.0.113.7", "198.51.100.9"] {
            assert!(r.check(ip(a)).is_err(), "{a}");
        }
        assert!(r.check(ip("198.51.101.9")).is_ok());
        assert_eq!(
            parse_net("::ffff:198.51.100.0/120").unwrap(),
            "198.51.100.0/24".parse::<IpNet>().unwrap()
        );
        // Not mapped, or wider than the mapped range: as written.
        for n in ["2001:db8::/32", "::/0", "::fffe:0:0/95"] {
            assert_eq!(parse_net(n).unwrap(), n.parse::<IpNet>().unwrap());
        }
    }

    #[test]
    fn networks_with_bits_past_their_prefix_are_refused() {
        let e = parse_net("203.0.113.10/8").unwrap_err();
        assert!(
            e.contains("203.0.0.0/8") && e.contains("203.0.113.10/32"),
            "{e}"
        );
        assert!(parse_net("2001:db8::1/64").is_err());
        assert!(parse_net("203.0.0.0/8").is_ok());
        assert!(parse_net("203.0.113.10/32").is_ok());
    }

    #[test]
    fn bad_entries_are_all_reported_with_paths() {
        let raw = RawIpFilter {
            allow: vec!["10.0.0.0/33".into(), "1.2.3.4".into()],
            deny: vec!["nope".into()],
        };
        let mut e = ConfigErrors::new();
        IpRules::compile(&raw, "routes[1].ip_filter", &mut e);
        let paths: Vec<_> = e.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "routes[1].ip_filter.allow[0]",
                "routes[1].ip_filter.deny[0]"
            ]
        );
    }

    #[tokio::test]
    async fn stage_rejects_with_ip_denied() {
        use http_body_util::{BodyExt, Empty};
        let stage = IpFilterStage::global(rules(&[], &["127.0.0.1"]));
        let (head, ()) = http::Request::new(()).into_parts();
        let body = Empty::new()
            .map_err(|e| -> portcullis_core::BoxError { match e {} })
            .boxed_unsync();
        let mut req = GatewayRequest::new(head, body);
        let mut ctx = RequestCtx::new(
            "127.0.0.1:5000".parse().unwrap(),
            portcullis_core::Scheme::Http,
            Arc::from("l"),
        );
        match stage.on_request(&mut req, &mut ctx).resolve().await {
            portcullis_core::Verdict::Reject(r) => assert_eq!(r.reason, RejectReason::IpDenied),
            v => panic!("expected rejection, got {v:?}"),
        }
    }

    /// The global step and its bans: a ban of an IPv6 /64 refuses its addresses (403
    /// `ip_banned`, `Retry-After`) but not an exempt one among them.
    #[tokio::test]
    async fn stage_lets_an_exempt_address_through_a_banned_prefix() {
        use http_body_util::{BodyExt, Empty};
        let raw = bans::RawBans {
            exempt: vec!["2001:db8:1:2::10".into()],
            ..bans::RawBans::default()
        };
        let mut e = ConfigErrors::new();
        let ban_rules = Arc::new(bans::BanRules::compile(
            &raw,
            "bans",
            std::path::Path::new("."),
            &mut e,
        ));
        assert!(e.is_empty(), "{e}");
        let list = bans::BanList::new();
        let now = std::time::Instant::now();
        list.ban(
            &ban_rules,
            ip("2001:db8:1:2::99"),
            std::time::Duration::from_secs(3600),
            "admin",
            now,
        )
        .unwrap();
        let stage = IpFilterStage::global_with_bans(rules(&[], &[]), list, ban_rules);
        let run = |client: &str| {
            let (head, ()) = http::Request::new(()).into_parts();
            let body = Empty::new()
                .map_err(|e| -> portcullis_core::BoxError { match e {} })
                .boxed_unsync();
            let req = GatewayRequest::new(head, body);
            let ctx = RequestCtx::new(
                std::net::SocketAddr::new(ip(client), 5000),
                portcullis_core::Scheme::Http,
                Arc::from("l"),
            );
            (req, ctx)
        };
        let (mut req, mut ctx) = run("2001:db8:1:2::5");
        match stage.on_request(&mut req, &mut ctx).resolve().await {
            portcullis_core::Verdict::Reject(r) => {
                assert_eq!(r.reason, RejectReason::IpBanned);
                assert_eq!(r.status(), http::StatusCode::FORBIDDEN);
                let (_, retry) = r
                    .headers
                    .iter()
                    .find(|(n, _)| n == http::header::RETRY_AFTER)
                    .unwrap();
                let retry: u64 = retry.to_str().unwrap().parse().unwrap();
                assert!((3599..=3600).contains(&retry), "{retry}");
            }
            v => panic!("expected rejection, got {v:?}"),
        }
        let (mut req, mut ctx) = run("2001:db8:1:2::10");
        match stage.on_request(&mut req, &mut ctx).resolve().await {
            portcullis_core::Verdict::Continue => {}
            v => panic!("the exempt address is let through, got {v:?}"),
        }
    }
}
