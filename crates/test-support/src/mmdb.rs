//! A writer of MaxMind DB files (format 2.0), so GeoIP tests read a real database made at test
//! time instead of a downloaded GeoLite2 file.
//!
//! Written from the published MaxMind DB specification. A file is three parts:
//!
//! 1. a binary search tree over the 128 bits of an IPv6 address (32 bits in an IPv4-only
//!    database), `node_count` nodes of two records each (24, 28 or 32 bits per record). A
//!    record below `node_count` is the next node, equal to it means "no data", above it points
//!    into the data section at `record - node_count - 16`;
//! 2. 16 zero bytes, then the data section: the records, encoded with the format's typed fields
//!    (maps, UTF-8 strings, unsigned integers, arrays, booleans);
//! 3. the marker `\xAB\xCD\xEFMaxMind.com` followed by the metadata map.
//!
//! As in MaxMind's own databases, IPv4 networks live at `::a.b.c.d/(96 + prefix)` in an IPv6
//! tree, and by default `::ffff:0:0/96` (IPv4-mapped) and `2002::/16` (6to4) are aliases that
//! point at that IPv4 subtree. The most specific network wins whatever the insertion order;
//! between two identical networks the one inserted last wins.
//!
//! ```no_run
//! # use portcullis_test_support::mmdb::{write_country_db};
//! # fn f(path: &std::path::Path) -> std::io::Result<()> {
//! write_country_db(path, &[("81.0.0.0/8".parse().unwrap(), "DE"), ("2a00::/16".parse().unwrap(), "FR")])?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// The bytes that open the metadata section.
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// Zero bytes between the search tree and the data section.
const DATA_SEPARATOR: usize = 16;

/// A value of the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// UTF-8 string (type 2).
    Str(String),
    /// Unsigned 16-bit integer (type 5).
    U16(u16),
    /// Unsigned 32-bit integer (type 6).
    U32(u32),
    /// Unsigned 64-bit integer (extended type 9).
    U64(u64),
    /// Boolean (extended type 14).
    Bool(bool),
    /// Map with string keys, in this order (type 7).
    Map(Vec<(String, Value)>),
    /// Array (extended type 11).
    Array(Vec<Value>),
}

impl Value {
    /// A string value.
    pub fn str(s: &str) -> Value {
        Value::Str(s.to_owned())
    }

    /// A map value from `(key, value)` pairs.
    pub fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

/// English name of a few countries, for realistic `names.en` fields.
fn country_name(iso: &str) -> String {
    let name = match iso {
        "DE" => "Germany",
        "FR" => "France",
        "US" => "United States",
        "GB" => "United Kingdom",
        "NL" => "Netherlands",
        "JP" => "Japan",
        "CN" => "China",
        "RU" => "Russia",
        "BR" => "Brazil",
        "IN" => "India",
        "KP" => "North Korea",
        "IR" => "Iran",
        _ => return format!("Country {iso}"),
    };
    name.to_owned()
}

/// `{"iso_code": iso, "names": {"en": …}}`, the shape of `country` and `registered_country`.
fn country_field(iso: &str) -> Value {
    Value::map([
        ("iso_code", Value::str(iso)),
        ("names", Value::map([("en", Value::Str(country_name(iso)))])),
    ])
}

/// A GeoIP2/GeoLite2 Country record: `country` and/or `registered_country`, each with
/// `iso_code` and `names.en` (`None` leaves the key out).
pub fn geo_record(country: Option<&str>, registered_country: Option<&str>) -> Value {
    let mut pairs = Vec::new();
    if let Some(iso) = country {
        pairs.push(("country".to_owned(), country_field(iso)));
    }
    if let Some(iso) = registered_country {
        pairs.push(("registered_country".to_owned(), country_field(iso)));
    }
    Value::Map(pairs)
}

/// `{"country": {"iso_code": iso, "names": {"en": …}}}`.
pub fn country_record(iso: &str) -> Value {
    geo_record(Some(iso), None)
}

/// Writes a `GeoLite2-Country` database (IPv6 tree, 28-bit records, IPv4 aliases) mapping each
/// network to a [`country_record`].
pub fn write_country_db(path: &Path, entries: &[(IpNet, &str)]) -> io::Result<()> {
    let mut writer = MmdbWriter::new("GeoLite2-Country");
    for (net, iso) in entries {
        writer.insert(*net, country_record(iso));
    }
    writer.write(path)
}

/// Builds a MaxMind DB file from `(network, value)` entries.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    ip_version: u16,
    record_size: u16,
    ipv4_aliases: bool,
    build_epoch: u64,
    languages: Vec<String>,
    description: String,
    entries: Vec<(IpNet, Value)>,
}

impl MmdbWriter {
    /// An empty database of this `database_type` (e.g. `GeoLite2-Country`, `GeoLite2-City`,
    /// `GeoLite2-ASN`): IPv6 tree, 28-bit records, IPv4 aliases, built now.
    pub fn new(database_type: &str) -> MmdbWriter {
        let build_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        MmdbWriter {
            database_type: database_type.to_owned(),
            ip_version: 6,
            record_size: 28,
            ipv4_aliases: true,
            build_epoch,
            languages: vec!["en".to_owned()],
            description: format!(
                "{database_type} test database written by portcullis-test-support"
            ),
            entries: Vec::new(),
        }
    }

    /// 24, 28 or 32 bits per record (any other value makes [`MmdbWriter::to_bytes`] fail).
    pub fn record_size(mut self, bits: u16) -> MmdbWriter {
        self.record_size = bits;
        self
    }

    /// 6 (default: IPv4 networks are mapped into `::/96`) or 4 (an IPv4-only tree; inserting an
    /// IPv6 network then makes [`MmdbWriter::to_bytes`] fail).
    pub fn ip_version(mut self, version: u16) -> MmdbWriter {
        self.ip_version = version;
        self
    }

    /// Whether `::ffff:0:0/96` and `2002::/16` point at the IPv4 subtree (default true). Any
    /// entry inside those two networks is hidden by the aliases when they are on.
    pub fn ipv4_aliases(mut self, on: bool) -> MmdbWriter {
        self.ipv4_aliases = on;
        self
    }

    /// The metadata `build_epoch` (seconds since 1970).
    pub fn build_epoch(mut self, epoch: u64) -> MmdbWriter {
        self.build_epoch = epoch;
        self
    }

    /// Maps `net` (host bits are ignored) to `value`.
    pub fn insert(&mut self, net: IpNet, value: Value) -> &mut MmdbWriter {
        self.entries.push((net.trunc(), value));
        self
    }

    /// The whole file.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        if !matches!(self.record_size, 24 | 28 | 32) {
            return Err(invalid(format!(
                "record size {} is not 24, 28 or 32",
                self.record_size
            )));
        }
        let tree_bits: u8 = match self.ip_version {
            4 => 32,
            6 => 128,
            v => return Err(invalid(format!("ip_version {v} is not 4 or 6"))),
        };

        // Data section: each distinct value once, shared by every network that has it.
        let mut data = Vec::new();
        let mut offsets: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut keyed = Vec::with_capacity(self.entries.len());
        for (net, value) in &self.entries {
            let mut encoded = Vec::new();
            encode(value, &mut encoded)?;
            let offset = *offsets.entry(encoded).or_insert_with_key(|bytes| {
                data.extend_from_slice(bytes);
                data.len() - bytes.len()
            });
            let (bits, len) = tree_key(*net, tree_bits)?;
            keyed.push((bits, len, offset));
        }

        // Shorter prefixes first, so a more specific network always overrides (the sort is
        // stable: between equal networks the later entry wins).
        keyed.sort_by_key(|&(_, len, _)| len);
        let mut trie = Trie::new();
        for &(bits, len, offset) in &keyed {
            trie.set(bits, len, Rec::Data(offset));
        }
        if self.ip_version == 6 && self.ipv4_aliases {
            let ipv4_root = trie.get(0, 96);
            trie.set(
                u128::from(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
                96,
                ipv4_root,
            );
            trie.set(
                u128::from(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0)),
                16,
                ipv4_root,
            );
        }

        let mut out = trie.serialize(self.record_size)?;
        let node_count = u32::try_from(trie.reachable_count())
            .map_err(|_| invalid("more than 2^32 nodes".to_owned()))?;
        out.extend_from_slice(&[0u8; DATA_SEPARATOR]);
        out.extend_from_slice(&data);
        out.extend_from_slice(METADATA_MARKER);
        let metadata = Value::map([
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            ("database_type", Value::str(&self.database_type)),
            (
                "description",
                Value::map([("en", Value::str(&self.description))]),
            ),
            ("ip_version", Value::U16(self.ip_version)),
            (
                "languages",
                Value::Array(self.languages.iter().map(|l| Value::str(l)).collect()),
            ),
            ("node_count", Value::U32(node_count)),
            ("record_size", Value::U16(self.record_size)),
        ]);
        encode(&metadata, &mut out)?;
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_bytes()?)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The network as (address bits left-aligned in a u128, prefix length in the tree).
fn tree_key(net: IpNet, tree_bits: u8) -> io::Result<(u128, u8)> {
    match (net, tree_bits) {
        (IpNet::V4(v4), 128) => Ok((u128::from(u32::from(v4.addr())), 96 + v4.prefix_len())),
        (IpNet::V4(v4), _) => Ok((u128::from(u32::from(v4.addr())) << 96, v4.prefix_len())),
        (IpNet::V6(v6), 128) => Ok((u128::from(v6.addr()), v6.prefix_len())),
        (IpNet::V6(v6), _) => Err(invalid(format!(
            "IPv6 network {v6} in an IPv4-only database"
        ))),
    }
}

/// One record of a search-tree node while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    /// No data for this network.
    Empty,
    /// Offset in the data section.
    Data(usize),
    /// Index of a node in the arena.
    Node(usize),
}

/// A binary trie over address bits; node 0 is the root. Aliases make it a DAG.
struct Trie {
    nodes: Vec<[Rec; 2]>,
}

fn bit_at(bits: u128, depth: u8) -> usize {
    ((bits >> (127 - depth)) & 1) as usize
}

impl Trie {
    fn new() -> Trie {
        Trie {
            nodes: vec![[Rec::Empty, Rec::Empty]],
        }
    }

    /// Makes every address of `bits/len` resolve to `rec`, splitting coarser records on the way.
    fn set(&mut self, bits: u128, len: u8, rec: Rec) {
        if len == 0 {
            self.nodes[0] = [rec, rec];
            return;
        }
        let mut node = 0;
        for depth in 0..len - 1 {
            let bit = bit_at(bits, depth);
            node = match self.nodes[node][bit] {
                Rec::Node(next) => next,
                coarser => {
                    // The network covered by this record is split in two halves that keep it.
                    self.nodes.push([coarser, coarser]);
                    let next = self.nodes.len() - 1;
                    self.nodes[node][bit] = Rec::Node(next);
                    next
                }
            };
        }
        self.nodes[node][bit_at(bits, len - 1)] = rec;
    }

    /// The record that `bits/len` resolves to (a node, or the data of a coarser network).
    fn get(&self, bits: u128, len: u8) -> Rec {
        let mut rec = Rec::Node(0);
        for depth in 0..len {
            match rec {
                Rec::Node(node) => rec = self.nodes[node][bit_at(bits, depth)],
                _ => break,
            }
        }
        rec
    }

    /// Numbers of the nodes reachable from the root, breadth first (root = 0), by arena index.
    fn numbering(&self) -> (Vec<Option<usize>>, Vec<usize>) {
        let mut number = vec![None; self.nodes.len()];
        let mut order = vec![0];
        number[0] = Some(0);
        let mut i = 0;
        while i < order.len() {
            for rec in self.nodes[order[i]] {
                if let Rec::Node(child) = rec
                    && number[child].is_none()
                {
                    number[child] = Some(order.len());
                    order.push(child);
                }
            }
            i += 1;
        }
        (number, order)
    }

    fn reachable_count(&self) -> usize {
        self.numbering().1.len()
    }

    /// The search tree section.
    fn serialize(&self, record_size: u16) -> io::Result<Vec<u8>> {
        let (number, order) = self.numbering();
        let node_count = order.len();
        let max = (1u64 << record_size) - 1;
        let value = |rec: Rec| -> io::Result<u64> {
            let v = match rec {
                Rec::Empty => node_count,
                Rec::Data(offset) => node_count + DATA_SEPARATOR + offset,
                Rec::Node(n) => number[n].unwrap_or(node_count),
            } as u64;
            if v > max {
                return Err(invalid(format!(
                    "record value {v} does not fit in {record_size} bits"
                )));
            }
            Ok(v)
        };
        let mut out = Vec::with_capacity(node_count * usize::from(record_size) / 4);
        for &arena in &order {
            let [left, right] = self.nodes[arena];
            let (l, r) = (value(left)?, value(right)?);
            match record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                28 => {
                    // The middle byte holds bits 24..28 of the left record (high nibble) and
                    // of the right record (low nibble).
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.push(((((l >> 24) & 0x0f) << 4) | ((r >> 24) & 0x0f)) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                _ => {
                    out.extend_from_slice(&l.to_be_bytes()[4..]);
                    out.extend_from_slice(&r.to_be_bytes()[4..]);
                }
            }
        }
        Ok(out)
    }
}

/// Writes a field's control byte(s): 3 bits of type (0 = extended, the real type minus 7 in the
/// next byte) and 5 bits of size (29, 30, 31 = 1, 2, 3 more size bytes).
fn control(kind: u8, size: usize, out: &mut Vec<u8>) -> io::Result<()> {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, Vec::new())
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else if size < 65_821 + (1 << 24) {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    } else {
        return Err(invalid(format!("field of {size} bytes is too large")));
    };
    if kind <= 7 {
        out.push((kind << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(kind - 7);
    }
    out.extend_from_slice(&extra);
    Ok(())
}

/// An unsigned integer: its big-endian bytes without leading zeros (0 is zero bytes).
fn uint(kind: u8, v: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    control(kind, 8 - skip, out)?;
    out.extend_from_slice(&bytes[skip..]);
    Ok(())
}

fn encode(value: &Value, out: &mut Vec<u8>) -> io::Result<()> {
    match value {
        Value::Str(s) => {
            control(2, s.len(), out)?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(v) => uint(5, u64::from(*v), out)?,
        Value::U32(v) => uint(6, u64::from(*v), out)?,
        Value::U64(v) => uint(9, *v, out)?,
        Value::Bool(b) => control(14, usize::from(*b), out)?,
        Value::Map(pairs) => {
            control(7, pairs.len(), out)?;
            for (k, v) in pairs {
                control(2, k.len(), out)?;
                out.extend_from_slice(k.as_bytes());
                encode(v, out)?;
            }
        }
        Value::Array(items) => {
            control(11, items.len(), out)?;
            for v in items {
                encode(v, out)?;
            }
        }
    }
    Ok(())
}

/// `addr` as the IPv6 address an IPv6 database stores it under (`::a.b.c.d` for IPv4).
pub fn tree_address(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => Ipv6Addr::from(u128::from(u32::from(v4))),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ctl(kind: u8, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        control(kind, size, &mut out).unwrap();
        out
    }

    #[test]
    fn control_bytes_follow_the_spec() {
        assert_eq!(ctl(2, 3), [0x43]);
        assert_eq!(ctl(2, 28), [0x5c]);
        assert_eq!(ctl(2, 29), [0x5d, 0]);
        assert_eq!(ctl(2, 284), [0x5d, 255]);
        assert_eq!(ctl(2, 285), [0x5e, 0, 0]);
        assert_eq!(ctl(2, 65_820), [0x5e, 0xff, 0xff]);
        assert_eq!(ctl(2, 65_821), [0x5f, 0, 0, 0]);
        assert_eq!(ctl(7, 2), [0xe2]);
        // Extended: type byte right after the control byte, before any size byte.
        assert_eq!(ctl(11, 3), [0x03, 0x04]);
        assert_eq!(ctl(9, 30), [0x1d, 0x02, 1]);
        assert_eq!(ctl(14, 1), [0x01, 0x07]);
    }

    #[test]
    fn uints_drop_leading_zeros() {
        let mut out = Vec::new();
        uint(6, 0, &mut out).unwrap();
        assert_eq!(out, [0xc0]);
        out.clear();
        uint(5, 0x1234, &mut out).unwrap();
        assert_eq!(out, [0xa2, 0x12, 0x34]);
    }

    #[test]
    fn records_pack_into_nodes() {
        let mut trie = Trie::new();
        trie.set(1 << 127, 1, Rec::Data(0));
        let tree = trie.serialize(28).unwrap();
        // One node: left empty (= node_count 1), right = 1 + 16 + 0.
        assert_eq!(tree, [0, 0, 1, 0x00, 0, 0, 17]);
        assert_eq!(trie.serialize(24).unwrap(), [0, 0, 1, 0, 0, 17]);
        assert_eq!(trie.serialize(32).unwrap(), [0, 0, 0, 1, 0, 0, 0, 17]);
    }

    #[test]
    fn tree_addresses_map_ipv4_into_the_first_96_bits() {
        let v4 = IpAddr::V4(Ipv4Addr::new(81, 2, 3, 4));
        assert_eq!(tree_address(v4), "::5102:304".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(MmdbWriter::new("x").record_size(20).to_bytes().is_err());
        let mut w = MmdbWriter::new("x").ip_version(4);
        w.insert("2001:db8::/32".parse().unwrap(), country_record("DE"));
        assert!(w.to_bytes().is_err());
    }
}
