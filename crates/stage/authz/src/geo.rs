//! Country of a client address, from a MaxMind DB file (GeoLite2/GeoIP2 Country or City, or any
//! database with the same `country` / `registered_country` records), for the zero-trust risk
//! score.
//!
//! * **Takes**: the path of a `.mmdb` file, read whole into memory once per configuration
//!   snapshot (no mmap: replacing the file on disk while it is mapped would be undefined
//!   behaviour, and a reload reads the new file anyway).
//! * **Produces**: the ISO 3166-1 alpha-2 code of an address, uppercase: `country.iso_code`,
//!   else `registered_country.iso_code` (anycast and satellite networks often have only the
//!   latter).
//! * **Rejects** at load time: a missing or unreadable file, a file that is not a MaxMind DB
//!   (no metadata, bad tree layout, unsupported version), a database type without country data
//!   (ASN, ISP, Anonymous-IP…).
//!
//! Invariant: a lookup never panics and never fails loudly. The reader bounds-checks every
//! access, so a corrupt record only makes that address's country unknown (`None`). The whole
//! file is not verified at load: that walks every network (slow on a City database, at every
//! reload), and the reader's verifier is stricter than the specification.

use std::net::IpAddr;
use std::path::Path;

use maxminddb::Reader;
use serde::Deserialize;

/// A GeoIP database loaded into memory once per configuration snapshot; `Send + Sync`.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
}

/// The only fields a lookup decodes; everything else in the record is skipped unread.
#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow, default)]
    country: Option<CountryField<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<CountryField<'a>>,
}

#[derive(Deserialize)]
struct CountryField<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

impl GeoDb {
    /// Opens a MaxMind DB file (GeoLite2-Country, GeoIP2-Country, GeoLite2-City …). Err with a
    /// clear message for a missing/unreadable/invalid file or a database type without country
    /// data.
    pub fn open(path: &Path) -> Result<GeoDb, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read GeoIP database {}: {e}", path.display()))?;
        let reader = Reader::from_source(bytes)
            .map_err(|e| format!("{} is not a valid MaxMind DB file: {e}", path.display()))?;
        let database_type = reader.metadata().database_type.as_str();
        if !has_country_data(database_type) {
            return Err(format!(
                "{}: database type {database_type:?} has no country data \
                 (use a GeoLite2/GeoIP2 Country or City database)",
                path.display()
            ));
        }
        Ok(GeoDb { reader })
    }

    /// ISO 3166-1 alpha-2 country code (uppercase) of `ip`: `country.iso_code`, else
    /// `registered_country.iso_code`; `None` when not found. Never panics on any address (IPv4
    /// in an IPv6 database, IPv4-mapped IPv6 …).
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        // ::ffff:a.b.c.d is looked up as a.b.c.d: not every database aliases the mapped range
        // to its IPv4 subtree, and an IPv4-only database could not answer it otherwise.
        let lookup = self.reader.lookup(ip.to_canonical()).ok()?;
        let record: CountryRecord<'_> = lookup.decode().ok()??;
        let iso = |field: Option<CountryField<'_>>| field?.iso_code.and_then(parse_country);
        iso(record.country).or_else(|| iso(record.registered_country))
    }

    /// The metadata `database_type`, e.g. `GeoLite2-Country`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let metadata = self.reader.metadata();
        f.debug_struct("GeoDb")
            .field("database_type", &metadata.database_type)
            .field("build_epoch", &metadata.build_epoch)
            .field("node_count", &metadata.node_count)
            .finish_non_exhaustive()
    }
}

/// Whether records of this database type carry `country` data: the Country, City and
/// Enterprise families of MaxMind and of compatible publishers (e.g. `DBIP-Country-Lite`).
fn has_country_data(database_type: &str) -> bool {
    let t = database_type.to_ascii_lowercase();
    ["country", "city", "enterprise"]
        .iter()
        .any(|kind| t.contains(kind))
}

/// Two ASCII letters, case-insensitive, as an uppercase ISO 3166-1 alpha-2 code.
pub fn parse_country(s: &str) -> Option<[u8; 2]> {
    match s.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use ipnet::{IpNet, Ipv4Net, Ipv6Net};
    use portcullis_test_support::mmdb::{
        MmdbWriter, Value, country_record, geo_record, tree_address, write_country_db,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn cc(s: &str) -> Option<[u8; 2]> {
        parse_country(s)
    }

    /// A writer's output opened as a `GeoDb` (the temporary folder lives as long as the test).
    fn open(writer: &MmdbWriter) -> (tempfile::TempDir, GeoDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geo.mmdb");
        writer.write(&path).unwrap();
        let db = GeoDb::open(&path).unwrap();
        (dir, db)
    }

    fn countries(entries: &[(&str, &str)]) -> MmdbWriter {
        let mut w = MmdbWriter::new("GeoLite2-Country");
        for (n, iso) in entries {
            w.insert(net(n), country_record(iso));
        }
        w
    }

    const WORLD: &[(&str, &str)] = &[
        ("81.0.0.0/8", "DE"),
        ("81.2.0.0/16", "FR"),
        ("81.2.3.0/24", "NL"),
        ("81.2.3.4/32", "JP"),
        ("82.0.0.0/8", "GB"),
        ("83.0.0.0/9", "US"),
        ("83.128.0.0/9", "BR"),
        ("2a00::/12", "DE"),
        ("2a01:4f8::/32", "FR"),
        ("2a01:4f8:1::/48", "NL"),
        ("2a01:4f8:1:2::1/128", "JP"),
        ("2001:db8::/32", "KP"),
    ];

    #[test]
    fn ipv4_and_ipv6_most_specific_network_wins() {
        for bits in [24, 28, 32] {
            let (_dir, db) = open(&countries(WORLD).record_size(bits));
            assert_eq!(db.database_type(), "GeoLite2-Country");
            for (addr, want) in [
                ("81.0.0.0", "DE"),
                ("81.255.255.255", "DE"),
                ("81.2.0.0", "FR"),
                ("81.2.255.255", "FR"),
                ("81.2.3.0", "NL"),
                ("81.2.3.3", "NL"),
                ("81.2.3.4", "JP"),
                ("81.2.3.5", "NL"),
                ("81.3.0.0", "DE"),
                ("82.1.2.3", "GB"),
                ("83.127.255.255", "US"),
                ("83.128.0.0", "BR"),
                ("2a00::1", "DE"),
                ("2a0f:ffff::1", "DE"),
                ("2a01:4f8::", "FR"),
                ("2a01:4f8:ffff::1", "FR"),
                ("2a01:4f8:1::", "NL"),
                ("2a01:4f8:1:2::", "NL"),
                ("2a01:4f8:1:2::1", "JP"),
                ("2a01:4f8:1:2::2", "NL"),
                ("2001:db8::42", "KP"),
            ] {
                assert_eq!(
                    db.country(ip(addr)),
                    cc(want),
                    "{addr} with {bits}-bit records"
                );
            }
            for addr in [
                "80.255.255.255",
                "84.0.0.0",
                "1.1.1.1",
                "0.0.0.0",
                "255.255.255.255",
            ] {
                assert_eq!(db.country(ip(addr)), None, "{addr}");
            }
            for addr in ["2a10::1", "2001:db9::", "::", "::1", "ffff::1", "fe80::1"] {
                assert_eq!(db.country(ip(addr)), None, "{addr}");
            }
        }
    }

    #[test]
    fn a_country_file_from_the_helper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("GeoLite2-Country.mmdb");
        write_country_db(
            &path,
            &[(net("81.0.0.0/8"), "de"), (net("2a00::/12"), "FR")],
        )
        .unwrap();
        let db = GeoDb::open(&path).unwrap();
        assert_eq!(db.database_type(), "GeoLite2-Country");
        assert_eq!(db.country(ip("81.1.2.3")), Some(*b"DE"));
        assert_eq!(db.country(ip("2a00::1")), Some(*b"FR"));
        assert!(format!("{db:?}").contains("GeoLite2-Country"));
    }

    /// Data past 16 MiB needs the high bits of 28-bit records (the nibbles of the middle
    /// byte); 24-bit records cannot point there at all.
    #[test]
    fn data_beyond_16_mib_is_reached_through_28_and_32_bit_records() {
        let padding = "x".repeat(9 << 20);
        let mut w = MmdbWriter::new("GeoLite2-Country");
        // Inserted first, so it takes the first 18 MiB of the data section.
        w.insert(
            net("10.0.0.0/8"),
            Value::map([
                ("a", Value::Str(padding.clone())),
                ("b", Value::Str(padding)),
            ]),
        );
        for (n, iso) in WORLD {
            w.insert(net(n), country_record(iso));
        }
        for bits in [28, 32] {
            let (_dir, db) = open(&w.clone().record_size(bits));
            assert_eq!(db.country(ip("81.2.3.4")), cc("JP"), "{bits}");
            assert_eq!(db.country(ip("81.2.3.5")), cc("NL"), "{bits}");
            assert_eq!(db.country(ip("2a01:4f8::1")), cc("FR"), "{bits}");
            assert_eq!(db.country(ip("10.1.1.1")), None, "{bits}");
        }
        assert!(w.clone().record_size(24).to_bytes().is_err());
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut reversed = WORLD.to_vec();
        reversed.reverse();
        let (_dir, db) = open(&countries(&reversed));
        assert_eq!(db.country(ip("81.2.3.4")), cc("JP"));
        assert_eq!(db.country(ip("81.2.3.5")), cc("NL"));
        assert_eq!(db.country(ip("81.9.0.0")), cc("DE"));
        assert_eq!(db.country(ip("2a01:4f8:1:2::1")), cc("JP"));
    }

    #[test]
    fn ipv4_mapped_and_6to4_addresses_find_the_ipv4_country() {
        let (_dir, db) = open(&countries(WORLD));
        assert_eq!(db.country(ip("::ffff:81.2.3.4")), cc("JP"));
        assert_eq!(db.country(ip("::ffff:82.0.0.1")), cc("GB"));
        assert_eq!(db.country(ip("::ffff:1.1.1.1")), None);
        // 6to4 is an alias in the database itself, as in MaxMind's files.
        assert_eq!(db.country(ip("2002:5102:0304::1")), cc("JP"));
        assert_eq!(db.country(ip("2002:0101:0101::1")), None);

        // Without aliases in the file, an IPv4-mapped address is still looked up as IPv4.
        let (_dir, db) = open(&countries(WORLD).ipv4_aliases(false));
        assert_eq!(db.country(ip("::ffff:81.2.3.4")), cc("JP"));
        assert_eq!(db.country(ip("2002:5102:0304::1")), None);
    }

    #[test]
    fn ipv4_addresses_in_ipv6_trees_of_every_shape() {
        // No IPv4 data at all: the IPv4 subtree is missing.
        let (_dir, db) = open(&countries(&[("2a00::/12", "DE")]));
        assert_eq!(db.country(ip("81.2.3.4")), None);
        assert_eq!(db.country(ip("::ffff:81.2.3.4")), None);
        // An IPv6 network covering the whole IPv4 range: the tree ends above ::/96.
        let (_dir, db) = open(&countries(&[("::/8", "US")]).ipv4_aliases(false));
        assert_eq!(db.country(ip("81.2.3.4")), cc("US"));
        assert_eq!(db.country(ip("::ffff:81.2.3.4")), cc("US"));
        // Everything.
        let (_dir, db) = open(&countries(&[("::/0", "FR"), ("0.0.0.0/0", "DE")]));
        assert_eq!(db.country(ip("81.2.3.4")), cc("DE"));
        assert_eq!(db.country(ip("2a00::1")), cc("FR"));
        // An empty database.
        let (_dir, db) = open(&countries(&[]));
        assert_eq!(db.country(ip("81.2.3.4")), None);
        assert_eq!(db.country(ip("2a00::1")), None);
    }

    #[test]
    fn ipv4_only_database() {
        let (_dir, db) =
            open(&countries(&[("81.0.0.0/8", "DE"), ("81.2.0.0/16", "FR")]).ip_version(4));
        assert_eq!(db.country(ip("81.1.1.1")), cc("DE"));
        assert_eq!(db.country(ip("81.2.1.1")), cc("FR"));
        assert_eq!(db.country(ip("::ffff:81.2.1.1")), cc("FR"));
        assert_eq!(db.country(ip("2a00::1")), None);
        assert_eq!(db.country(ip("::1")), None);
    }

    #[test]
    fn registered_country_when_country_is_absent() {
        let mut w = MmdbWriter::new("GeoIP2-Country");
        w.insert(net("81.0.0.0/8"), geo_record(None, Some("DE")))
            .insert(net("82.0.0.0/8"), geo_record(Some("FR"), Some("US")))
            .insert(net("83.0.0.0/8"), geo_record(None, None))
            .insert(net("84.0.0.0/8"), geo_record(Some("?"), Some("nl")))
            .insert(net("85.0.0.0/8"), Value::map([("country", Value::map([]))]));
        let (_dir, db) = open(&w);
        assert_eq!(db.country(ip("81.1.1.1")), cc("DE"));
        assert_eq!(db.country(ip("82.1.1.1")), cc("FR"));
        assert_eq!(db.country(ip("83.1.1.1")), None);
        assert_eq!(db.country(ip("84.1.1.1")), cc("NL"));
        assert_eq!(db.country(ip("85.1.1.1")), None);
    }

    #[test]
    fn records_of_another_shape_are_unknown_not_errors() {
        let mut w = MmdbWriter::new("GeoLite2-City");
        w.insert(net("81.0.0.0/8"), Value::str("DE"))
            .insert(
                net("82.0.0.0/8"),
                Value::map([("country", Value::str("DE"))]),
            )
            .insert(
                net("83.0.0.0/8"),
                Value::map([("country", Value::map([("iso_code", Value::U32(7))]))]),
            )
            .insert(
                net("84.0.0.0/8"),
                Value::map([
                    (
                        "city",
                        Value::map([("names", Value::map([("en", Value::str("Berlin"))]))]),
                    ),
                    ("continent", Value::map([("code", Value::str("EU"))])),
                    (
                        "country",
                        Value::map([
                            ("geoname_id", Value::U32(2_921_044)),
                            ("iso_code", Value::str("de")),
                        ]),
                    ),
                    (
                        "location",
                        Value::map([("accuracy_radius", Value::U16(100))]),
                    ),
                    (
                        "subdivisions",
                        Value::Array(vec![Value::map([("iso_code", Value::str("BE"))])]),
                    ),
                    ("traits", Value::map([("is_anycast", Value::Bool(true))])),
                ]),
            );
        let (_dir, db) = open(&w);
        assert_eq!(db.country(ip("81.1.1.1")), None);
        assert_eq!(db.country(ip("82.1.1.1")), None);
        assert_eq!(db.country(ip("83.1.1.1")), None);
        assert_eq!(db.country(ip("84.1.1.1")), cc("DE"));
    }

    #[test]
    fn database_types_without_country_data_are_refused() {
        for t in [
            "GeoLite2-ASN",
            "GeoIP2-ISP",
            "GeoIP2-Anonymous-IP",
            "GeoIP2-Connection-Type",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.mmdb");
            let mut w = MmdbWriter::new(t);
            w.insert(
                net("81.0.0.0/8"),
                Value::map([("autonomous_system_number", Value::U32(3320))]),
            );
            w.write(&path).unwrap();
            let err = GeoDb::open(&path).unwrap_err();
            assert!(err.contains(t) && err.contains("no country data"), "{err}");
        }
        for t in [
            "GeoLite2-City",
            "GeoIP2-Enterprise",
            "DBIP-Country-Lite",
            "GeoIP2-Country",
        ] {
            let mut w = MmdbWriter::new(t);
            w.insert(net("81.0.0.0/8"), country_record("DE"));
            let (_dir, db) = open(&w);
            assert_eq!(db.database_type(), t);
            assert_eq!(db.country(ip("81.0.0.1")), cc("DE"));
        }
    }

    #[test]
    fn missing_garbage_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.mmdb");
        let err = GeoDb::open(&missing).unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("missing.mmdb"),
            "{err}"
        );
        assert!(GeoDb::open(dir.path()).is_err(), "a folder");

        let bytes = countries(WORLD).to_bytes().unwrap();
        let path = dir.path().join("bad.mmdb");
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"not a database".to_vec(),
            vec![0; 4096],
            (0..=255u8).cycle().take(100_000).collect(),
            b"\xAB\xCD\xEFMaxMind.com".to_vec(),
            [&b"\xAB\xCD\xEFMaxMind.com"[..], &[0xe0]].concat(),
        ];
        // Cut anywhere: before, inside and after the metadata marker.
        let marker = bytes
            .windows(14)
            .rposition(|w| w == b"\xAB\xCD\xEFMaxMind.com")
            .unwrap();
        for cut in [
            1,
            100,
            marker,
            marker + 5,
            marker + 14,
            marker + 20,
            bytes.len() - 1,
        ] {
            cases.push(bytes[..cut].to_vec());
        }
        // Tree that claims more nodes than the file holds: drop the tree's first half.
        cases.push(bytes[bytes.len() / 2..].to_vec());
        for (i, case) in cases.iter().enumerate() {
            std::fs::write(&path, case).unwrap();
            let err = GeoDb::open(&path).unwrap_err();
            assert!(err.contains("not a valid MaxMind DB"), "case {i}: {err}");
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        // Flip bytes all over a valid file: opening may fail, lookups may answer anything, but
        // nothing panics.
        let bytes = countries(WORLD).record_size(24).to_bytes().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flip.mmdb");
        let probes: Vec<IpAddr> = [
            "81.2.3.4",
            "81.2.3.5",
            "2a01:4f8:1:2::1",
            "::ffff:82.0.0.1",
            "1.1.1.1",
            "::",
        ]
        .iter()
        .map(|s| ip(s))
        .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let mut corrupt = bytes.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..corrupt.len());
                corrupt[i] = rng.u8(..);
            }
            std::fs::write(&path, &corrupt).unwrap();
            if let Ok(db) = GeoDb::open(&path) {
                for p in &probes {
                    let _ = db.country(*p);
                }
            }
        }
    }

    #[test]
    fn parse_country_takes_two_ascii_letters() {
        assert_eq!(parse_country("DE"), Some(*b"DE"));
        assert_eq!(parse_country("de"), Some(*b"DE"));
        assert_eq!(parse_country("kP"), Some(*b"KP"));
        for bad in [
            "",
            "D",
            "DEU",
            "D1",
            "12",
            "D-",
            " DE",
            "ÄÖ",
            "Ä",
            "\u{0}\u{0}",
        ] {
            assert_eq!(parse_country(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn geodb_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<GeoDb>();
        check::<std::sync::Arc<GeoDb>>();
    }

    /// A random network of `rng`: IPv4 in 1.0.0.0–223.255.255.255, IPv6 in 2000::/3 outside
    /// 2002::/16 (the 6to4 alias), so every network is reachable by the reader.
    fn random_net(rng: &mut fastrand::Rng) -> IpNet {
        if rng.bool() {
            let addr = Ipv4Addr::from(rng.u32(0x0100_0000..0xe000_0000));
            IpNet::V4(Ipv4Net::new(addr, rng.u8(4..=32)).unwrap().trunc())
        } else {
            loop {
                let top = (rng.u128(..) >> 3) | (1u128 << 125);
                let n = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(top), rng.u8(16..=128)).unwrap());
                if outside_aliases(n.trunc()) {
                    return n.trunc();
                }
            }
        }
    }

    /// Whether `n` stays clear of the ranges the writer aliases to the IPv4 subtree.
    fn outside_aliases(n: IpNet) -> bool {
        !["2002::/16", "::ffff:0:0/96"].iter().any(|a| {
            let a = net(a);
            a.contains(&n) || n.contains(&a)
        })
    }

    /// The reader lists IPv4 networks of an IPv6 tree as `::a.b.c.d/(96 + len)` or as IPv4;
    /// the random entries hold no IPv6 network inside `::/96`, so such a network is IPv4.
    fn as_entry_net(n: IpNet) -> IpNet {
        match n {
            IpNet::V6(v6) if v6.prefix_len() >= 96 && u128::from(v6.network()) >> 32 == 0 => {
                let v4 = Ipv4Addr::from(u128::from(v6.network()) as u32);
                IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).unwrap())
            }
            other => other,
        }
    }

    /// A random address inside `n`.
    fn random_in(rng: &mut fastrand::Rng, n: IpNet) -> IpAddr {
        match n {
            IpNet::V4(n) => {
                let host = if n.prefix_len() == 32 {
                    0
                } else {
                    rng.u32(..) >> n.prefix_len()
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = if n.prefix_len() == 128 {
                    0
                } else {
                    rng.u128(..) >> n.prefix_len()
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    /// What the database should answer: the most specific containing network, the last
    /// inserted among equal ones.
    fn expected<'a>(entries: &[(IpNet, &'a str)], addr: IpAddr) -> Option<(IpNet, &'a str)> {
        let mut best: Option<(IpNet, &str)> = None;
        for &(n, iso) in entries {
            if n.contains(&addr) && best.is_none_or(|(b, _)| n.prefix_len() >= b.prefix_len()) {
                best = Some((n, iso));
            }
        }
        best
    }

    /// The writer checked against the real reader: a few hundred random (often nested)
    /// networks, looked up at their first, last and a random address and at random addresses
    /// anywhere, through `maxminddb` directly (with its full verifier) and through `GeoDb`.
    #[test]
    fn random_networks_read_back_through_the_maxminddb_reader() {
        const CODES: &[&str] = &[
            "DE", "FR", "US", "GB", "NL", "JP", "CN", "BR", "IN", "ZA", "AU", "CA",
        ];
        let mut rng = fastrand::Rng::with_seed(0x6e0);
        for round in 0..6 {
            let mut nets: Vec<IpNet> = Vec::new();
            while nets.len() < 400 {
                let n = match nets.last() {
                    // Nest inside, or sit next to, an earlier network a third of the time.
                    Some(&prev) if rng.u8(..3) == 0 => {
                        let longer = (prev.prefix_len() + rng.u8(1..=8)).min(prev.max_prefix_len());
                        let inner = IpNet::new(random_in(&mut rng, prev), longer)
                            .unwrap()
                            .trunc();
                        match sibling(inner) {
                            Some(s) if rng.bool() && outside_aliases(s) => s,
                            _ => inner,
                        }
                    }
                    _ => random_net(&mut rng),
                };
                nets.push(n);
            }
            let entries: Vec<(IpNet, &str)> = nets
                .iter()
                .map(|&n| (n, CODES[rng.usize(..CODES.len())]))
                .collect();

            let record_size = [24, 28, 32][round % 3];
            let mut writer = MmdbWriter::new("GeoLite2-Country").record_size(record_size);
            for (n, iso) in &entries {
                writer.insert(*n, country_record(iso));
            }
            let bytes = writer.to_bytes().unwrap();
            let reader = maxminddb::Reader::from_source(bytes.clone()).unwrap();
            reader.verify().unwrap();
            let meta = reader.metadata();
            assert_eq!(
                (
                    meta.binary_format_major_version,
                    meta.ip_version,
                    meta.record_size
                ),
                (2, 6, record_size)
            );
            assert_eq!(meta.database_type, "GeoLite2-Country");
            assert_eq!(meta.languages, ["en"]);
            assert!(meta.description.contains_key("en"));
            assert!(meta.build_epoch > 1_700_000_000);

            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("random.mmdb");
            std::fs::write(&path, &bytes).unwrap();
            let db = GeoDb::open(&path).unwrap();

            let mut probes = Vec::new();
            for &n in &nets {
                probes.push(n.network());
                probes.push(n.broadcast());
                probes.push(random_in(&mut rng, n));
            }
            for _ in 0..500 {
                let n = random_net(&mut rng);
                probes.push(random_in(&mut rng, n));
            }
            let mut found = 0;
            for addr in probes {
                let want = expected(&entries, addr);
                let result = reader.lookup(addr).unwrap();
                let iso: Option<String> = result
                    .decode_path(&maxminddb::path!["country", "iso_code"])
                    .unwrap();
                assert_eq!(
                    iso.as_deref(),
                    want.map(|(_, iso)| iso),
                    "{addr} in round {round}"
                );
                let name: Option<String> = result
                    .decode_path(&maxminddb::path!["country", "names", "en"])
                    .unwrap();
                assert_eq!(name.is_some(), want.is_some());
                if let Some((n, _)) = want {
                    found += 1;
                    // The record's network holds the address and lies within the entry's.
                    let got = result.network().unwrap();
                    let got = IpNet::new(got.network(), got.prefix()).unwrap();
                    assert!(
                        got.contains(&addr) && n.contains(&got),
                        "{addr}: {got} not in {n}"
                    );
                }
                assert_eq!(
                    db.country(addr),
                    want.and_then(|(_, iso)| cc(iso)),
                    "{addr}"
                );
                if let IpAddr::V4(v4) = addr {
                    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                    let via_alias: Option<String> = reader
                        .lookup(mapped)
                        .unwrap()
                        .decode_path(&maxminddb::path!["country", "iso_code"])
                        .unwrap();
                    assert_eq!(via_alias.as_deref(), want.map(|(_, iso)| iso), "{mapped}");
                    let compat = IpAddr::V6(tree_address(addr));
                    assert_eq!(db.country(compat), db.country(addr), "{compat}");
                }
            }
            assert!(found > 1_000, "only {found} probes inside a network");

            // Every network the reader lists carries the country the model expects there.
            let mut listed = 0;
            for item in reader.networks(Default::default()).unwrap() {
                let item = item.unwrap();
                let got = item.network().unwrap();
                let got = as_entry_net(IpNet::new(got.network(), got.prefix()).unwrap());
                let iso: Option<String> = item
                    .decode_path(&maxminddb::path!["country", "iso_code"])
                    .unwrap();
                assert_eq!(
                    iso.as_deref(),
                    expected(&entries, got.network()).map(|(_, iso)| iso),
                    "{got}"
                );
                assert_eq!(
                    iso.as_deref(),
                    expected(&entries, got.broadcast()).map(|(_, iso)| iso),
                    "{got}"
                );
                listed += 1;
            }
            assert!(listed >= 300, "{listed} networks listed");
        }
    }

    /// The other half of `n`'s parent network.
    fn sibling(n: IpNet) -> Option<IpNet> {
        let len = n.prefix_len();
        if len == 0 {
            return None;
        }
        match n {
            IpNet::V4(v4) => {
                let flipped = u32::from(v4.network()) ^ (1 << (32 - len));
                Ipv4Net::new(Ipv4Addr::from(flipped), len)
                    .ok()
                    .map(IpNet::V4)
            }
            IpNet::V6(v6) => {
                let flipped = u128::from(v6.network()) ^ (1 << (128 - len));
                Ipv6Net::new(Ipv6Addr::from(flipped), len)
                    .ok()
                    .map(IpNet::V6)
            }
        }
    }
}
