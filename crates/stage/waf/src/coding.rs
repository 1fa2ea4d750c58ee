//! Rule 1006: a request body in a content coding the WAF cannot inflate
//! ([`portcullis_core::coding`] inflates `gzip` and `deflate` bodies before inspection).

use crate::extract_rules::UNINSPECTABLE_CODING;
use crate::model::{Finding, Location, Part, Target};
use crate::transform::View;

/// Rule 1006: the body could not be inspected in its coding; it blocks by itself.
pub fn refused(why: &str, findings: &mut Vec<Finding>) {
    let t = Target::new(Location::Body, "", Part::Value, "");
    let mut f = Finding::new(UNINSPECTABLE_CODING, &t, View::Raw, why);
    f.blocks = true;
    findings.push(f);
}
