//! A small strict DER reader: just enough for SubjectPublicKeyInfo and RSAPublicKey.

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const NULL: u8 = 0x05;

/// rsaEncryption, 1.2.840.113549.1.1.1
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1, 1.2.840.10045.3.1.7
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1, 1.3.132.0.34
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// Ed25519, 1.3.101.112
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Public key material found in an SPKI, not yet validated beyond its encoding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SpkiKey {
    /// Big-endian modulus and exponent, leading zero bytes stripped.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point (0x04 || x || y).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// A cursor over DER bytes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one TLV with the expected tag; definite, minimal lengths only.
    fn read(&mut self, tag: u8) -> Result<&'a [u8], String> {
        let (&t, rest) = self.rest.split_first().ok_or("truncated DER")?;
        if t != tag {
            return Err(format!("expected DER tag {tag:#04x}, found {t:#04x}"));
        }
        let (&first, mut rest) = rest.split_first().ok_or("truncated DER length")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 3 {
                return Err("unsupported DER length form".into());
            }
            if rest.len() < count {
                return Err("truncated DER length".into());
            }
            let (len_bytes, after) = rest.split_at(count);
            rest = after;
            if len_bytes[0] == 0 {
                return Err("non-minimal DER length".into());
            }
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            if len < 0x80 {
                return Err("non-minimal DER length".into());
            }
            len
        };
        if rest.len() < len {
            return Err("DER value runs past its end".into());
        }
        let (value, after) = rest.split_at(len);
        self.rest = after;
        Ok(value)
    }

    /// Reads a non-negative INTEGER, returning its magnitude without leading zero bytes.
    fn read_unsigned(&mut self) -> Result<Vec<u8>, String> {
        let v = self.read(INTEGER)?;
        match v {
            [] => Err("empty DER INTEGER".into()),
            [first, ..] if first & 0x80 != 0 => Err("negative DER INTEGER".into()),
            [0, second, ..] if second & 0x80 == 0 => Err("non-minimal DER INTEGER".into()),
            _ => Ok(strip_leading_zeros(v).to_vec()),
        }
    }
}

pub(crate) fn strip_leading_zeros(mut v: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = v {
        v = rest;
    }
    v
}

/// Parses a DER SubjectPublicKeyInfo holding RSA, EC P-256/P-384 or Ed25519.
pub(crate) fn parse_spki(der: &[u8]) -> Result<SpkiKey, String> {
    let mut outer = Reader::new(der);
    let spki = outer.read(SEQUENCE)?;
    if !outer.is_empty() {
        return Err("trailing data after SubjectPublicKeyInfo".into());
    }
    let mut spki = Reader::new(spki);
    let alg_id = spki.read(SEQUENCE)?;
    let bits = spki.read(BIT_STRING)?;
    if !spki.is_empty() {
        return Err("trailing data in SubjectPublicKeyInfo".into());
    }
    let key = match bits {
        [0, key @ ..] => key,
        _ => return Err("BIT STRING with unused bits".into()),
    };

    let mut alg_id = Reader::new(alg_id);
    let oid = alg_id.read(OID)?;
    let parsed = if oid == OID_RSA {
        // parameters: NULL (RFC 3279), tolerated absent.
        if alg_id.peek_tag() == Some(NULL) && !alg_id.read(NULL)?.is_empty() {
            return Err("RSA parameters must be NULL".into());
        }
        parse_rsa_public_key(key)?
    } else if oid == OID_EC {
        let curve = alg_id.read(OID)?;
        let (len, make): (usize, fn(Vec<u8>) -> SpkiKey) = if curve == OID_P256 {
            (65, SpkiKey::P256)
        } else if curve == OID_P384 {
            (97, SpkiKey::P384)
        } else {
            return Err("unsupported EC curve".into());
        };
        if key.len() != len || key[0] != 0x04 {
            return Err("EC public key must be an uncompressed point".into());
        }
        make(key.to_vec())
    } else if oid == OID_ED25519 {
        if key.len() != 32 {
            return Err("Ed25519 public key must be 32 bytes".into());
        }
        SpkiKey::Ed25519(key.to_vec())
    } else {
        return Err("unsupported public key algorithm".into());
    };
    if !alg_id.is_empty() {
        return Err("unexpected algorithm parameters".into());
    }
    Ok(parsed)
}

/// Parses PKCS#1 RSAPublicKey: SEQUENCE { modulus INTEGER, publicExponent INTEGER }.
pub(crate) fn parse_rsa_public_key(der: &[u8]) -> Result<SpkiKey, String> {
    let mut outer = Reader::new(der);
    let seq = outer.read(SEQUENCE)?;
    if !outer.is_empty() {
        return Err("trailing data after RSAPublicKey".into());
    }
    let mut seq = Reader::new(seq);
    let n = seq.read_unsigned()?;
    let e = seq.read_unsigned()?;
    if !seq.is_empty() {
        return Err("trailing data in RSAPublicKey".into());
    }
    Ok(SpkiKey::Rsa { n, e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_odd_encodings() {
        // Long-form length for a short value.
        assert!(
            Reader::new(&[0x30, 0x81, 0x01, 0x00])
                .read(SEQUENCE)
                .is_err()
        );
        // Indefinite length.
        assert!(
            Reader::new(&[0x30, 0x80, 0x00, 0x00])
                .read(SEQUENCE)
                .is_err()
        );
        // Runs past the end.
        assert!(Reader::new(&[0x30, 0x05, 0x00]).read(SEQUENCE).is_err());
        // Negative and non-minimal integers.
        assert!(Reader::new(&[0x02, 0x01, 0x80]).read_unsigned().is_err());
        assert!(
            Reader::new(&[0x02, 0x02, 0x00, 0x01])
                .read_unsigned()
                .is_err()
        );
        assert_eq!(
            Reader::new(&[0x02, 0x02, 0x00, 0x80]).read_unsigned(),
            Ok(vec![0x80])
        );
        assert!(parse_spki(&[]).is_err());
        assert!(parse_spki(&[0x30, 0x00]).is_err());
    }

    #[test]
    fn ed25519_spki() {
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend([7u8; 32]);
        assert_eq!(parse_spki(&der), Ok(SpkiKey::Ed25519(vec![7u8; 32])));
        der.push(0);
        assert!(parse_spki(&der).is_err());
    }
}
