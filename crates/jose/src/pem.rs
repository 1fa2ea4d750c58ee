//! Minimal PEM (RFC 7468) encoding and decoding of a single block.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::JoseError;

/// Decodes the first PEM block labelled `label` (e.g. `"PUBLIC KEY"`); other blocks are ignored.
pub fn pem_decode(pem: &str, label: &str) -> Result<Vec<u8>, JoseError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| JoseError::Pem(format!("no {label} block")))?;
    let body_start = start + begin.len();
    let body_len = pem[body_start..]
        .find(&end)
        .ok_or_else(|| JoseError::Pem(format!("unterminated {label} block")))?;
    let body: String = pem[body_start..body_start + body_len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if body.is_empty() {
        return Err(JoseError::Pem(format!("empty {label} block")));
    }
    STANDARD
        .decode(body.as_bytes())
        .map_err(|e| JoseError::Pem(format!("bad base64 in {label} block: {e}")))
}

/// Encodes DER as a PEM block with 64-column base64 lines and a trailing newline.
pub fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // base64 output is ASCII, so splitting on byte boundaries is safe.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_line_length() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = pem_encode(&der, "TEST DATA");
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        assert_eq!(pem_decode(&pem, "TEST DATA").unwrap(), der);
        assert!(pem_decode(&pem, "PUBLIC KEY").is_err());
        assert!(pem_decode("-----BEGIN X-----\n!!\n-----END X-----", "X").is_err());
        assert!(pem_decode("-----BEGIN X-----\n-----END X-----", "X").is_err());
        assert!(pem_decode("-----BEGIN X-----\nAAAA\n", "X").is_err());
    }
}
