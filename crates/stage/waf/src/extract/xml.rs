//! XML bodies: a streaming quick-xml reader; entities are never resolved.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::{MAX_PATH, MAX_SEGMENT, Problem, Sink, plain_charset, truncate};
use crate::model::{Location, Part, Target};

fn at(pos: u64) -> usize {
    usize::try_from(pos).unwrap_or(usize::MAX)
}

/// Most elements with joined text (see [`Doc::close`]) nested in one another: each one's target
/// holds the text of those inside it again. Deeper is rule 1002. (The joined texts' total
/// length is bounded by the body's: [`Doc::joined_budget`].)
const MAX_MIXED_NESTING: usize = 8;
/// Joined texts may hold, in all, this many times the body's length: nested mixed content
/// repeats its text at every level (at most [`MAX_MIXED_NESTING`]), and ordinary rich text
/// (DocBook, XHTML) repeats it once or twice.
const JOINED_PER_BYTE: usize = 4;

/// Reads `body` as an XML document, pushing text, attribute, DOCTYPE and PI targets, and the
/// joined text of elements with mixed content.
pub(super) fn extract<'a>(
    body: &'a [u8],
    max_depth: usize,
    sink: &mut Sink<'a, '_>,
) -> Result<(), Problem> {
    let text = std::str::from_utf8(body).map_err(|e| Problem::Malformed {
        at: e.valid_up_to(),
    })?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().allow_dangling_amp = true;
    let mut doc = Doc {
        path: String::with_capacity(64),
        open: Vec::new(),
        pending: None,
        text: String::new(),
        runs: 0,
        roots: 0,
        max_depth,
        joined_budget: body.len().saturating_mul(JOINED_PER_BYTE),
    };
    loop {
        if sink.full {
            return Ok(());
        }
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(_) => {
                doc.flush(sink);
                return Err(Problem::Malformed {
                    at: at(reader.error_position()),
                });
            }
        };
        let here = at(reader.buffer_position());
        match event {
            Event::Start(e) => {
                doc.flush(sink);
                doc.open(&e, here, sink)?;
            }
            Event::Empty(e) => {
                doc.flush(sink);
                doc.open(&e, here, sink)?;
                doc.close(here, sink)?;
            }
            Event::End(_) => {
                doc.flush(sink);
                doc.close(here, sink)?;
            }
            Event::Text(t) => doc.text(t.into_inner(), here)?,
            Event::CData(t) => doc.text(t.into_inner(), here)?,
            Event::GeneralRef(r) => {
                if doc.open.is_empty() {
                    return Err(Problem::Malformed { at: here });
                }
                let name = r.into_inner();
                let pending = doc.pending.get_or_insert(Cow::Borrowed(""));
                match resolve(&name) {
                    Some(c) => pending.to_mut().push(c),
                    None => {
                        // Never resolved: kept as written.
                        let p = pending.to_mut();
                        p.push('&');
                        p.push_str(&name);
                        p.push(';');
                    }
                }
            }
            Event::DocType(t) => {
                doc.flush(sink);
                let value = format!("<!DOCTYPE {}>", t.into_inner());
                sink.push(Target::new(Location::Body, "!DOCTYPE", Part::Value, value));
            }
            Event::PI(p) => {
                // A target of its own, but not the end of the text around it: DOM's
                // `getTextContent()`, XPath's `string()`, .NET's `ReadElementContentAsString()`
                // and ElementTree join that text as they join it around comments.
                let value = format!("<?{}?>", p.into_inner());
                sink.push(Target::new(Location::Body, "?pi", Part::Value, value));
            }
            Event::Decl(d) => {
                // The declaration names the charset an XML parser decodes with (UTF-7 and
                // EBCDIC bodies can be valid UTF-8 to the WAF).
                let odd = match d.encoding() {
                    None => false,
                    Some(Ok(e)) => !plain_charset(&e),
                    Some(Err(_)) => return Err(Problem::Malformed { at: here }),
                };
                if odd {
                    sink.ambiguous("an XML encoding other than UTF-8, US-ASCII or ISO-8859-1");
                }
            }
            Event::Comment(_) => {}
            Event::Eof => {
                doc.flush(sink);
                if !doc.open.is_empty() || doc.roots == 0 {
                    return Err(Problem::Malformed { at: body.len() });
                }
                return Ok(());
            }
        }
    }
}

/// The five predefined entities and character references.
fn resolve(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let num = name.strip_prefix('#')?;
            let cp = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse::<u32>().ok()?,
            };
            char::from_u32(cp).filter(|&c| c != '\0')
        }
    }
}

/// Attribute values with predefined entities and character references decoded, other
/// references kept.
fn unescape(v: &str) -> Cow<'_, str> {
    if !v.contains('&') {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(p) = rest.find('&') {
        out.push_str(rest.get(..p).unwrap_or_default());
        let after = rest.get(p + 1..).unwrap_or_default();
        let decoded = after
            .bytes()
            .take(17)
            .position(|b| b == b';')
            .and_then(|e| Some((resolve(after.get(..e)?)?, e)));
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = after.get(e + 1..).unwrap_or_default();
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The XInclude (2001, 2003) and XSLT namespaces, and Xalan's Java extension namespace.
fn processor_namespace(uri: &str) -> bool {
    ["/xinclude", "/xsl/transform", "xml.apache.org/xalan"]
        .iter()
        .any(|n| {
            uri.as_bytes()
                .windows(n.len())
                .any(|w| w.eq_ignore_ascii_case(n.as_bytes()))
        })
}

struct Doc<'a> {
    /// `/order/item` of the open element.
    path: String,
    /// The open elements, outermost first.
    open: Vec<Frame>,
    /// Text of the current element not yet pushed.
    pending: Option<Cow<'a, str>>,
    /// The text of the elements read so far (runs of blanks included), in document order; an
    /// element's joined text is what it gained while the element was open.
    text: String,
    /// Runs of text that are not blank read so far.
    runs: usize,
    roots: usize,
    max_depth: usize,
    /// Bytes of joined text still to be made into targets: the body's length at first. A
    /// joined text longer than what is left is not made (nested mixed content repeats the
    /// text inside it at every level).
    joined_budget: usize,
}

/// An open element.
struct Frame {
    /// The path length before it.
    path: usize,
    /// [`Doc::text`]'s length when it opened.
    text: usize,
    /// [`Doc::runs`] when it opened.
    runs: usize,
    /// It has text of its own that is not blank.
    own_text: bool,
    /// Most elements with joined text nested in one another inside it.
    nested: usize,
}

impl<'a> Doc<'a> {
    fn open(
        &mut self,
        e: &BytesStart<'_>,
        here: usize,
        sink: &mut Sink<'a, '_>,
    ) -> Result<(), Problem> {
        if self.open.len() >= self.max_depth {
            return Err(Problem::TooDeep { at: here });
        }
        if self.open.is_empty() {
            self.roots += 1;
            if self.roots > 1 {
                return Err(Problem::Malformed { at: here });
            }
        }
        self.open.push(Frame {
            path: self.path.len(),
            text: self.text.len(),
            runs: self.runs,
            own_text: false,
            nested: 0,
        });
        if self.path.len() < MAX_PATH {
            self.path.push('/');
            self.path
                .push_str(truncate(e.name().into_inner(), MAX_SEGMENT));
        }
        // Markup an XML processor acts on is a target of its own, the start tag as written,
        // for the rules on XInclude and XSLT elements (which look at the element and its
        // attributes together): an `include` element (XInclude's), an `xsl:` one, and one
        // declaring the XInclude or XSLT namespace. Other tags are not targets: the HTML rules
        // would take SOAP's `<soap:Envelope xmlns:soap=…>` for markup injection.
        let qname = e.name();
        let mut processed = qname.local_name().as_ref() == "include"
            || qname
                .prefix()
                .is_some_and(|p| p.as_ref().eq_ignore_ascii_case("xsl"));
        for attr in e.attributes() {
            let attr = attr.map_err(|_| Problem::Malformed { at: here })?;
            let key = attr.key.as_ref();
            let value = unescape(&attr.value);
            // The namespace as the processor reads it: `&#47;` is `/` to it.
            if (key == "xmlns" || key.starts_with("xmlns:")) && processor_namespace(&value) {
                processed = true;
            }
            if value.is_empty() || sink.full {
                continue;
            }
            let base = self.path.len();
            self.path.push_str("/@");
            self.path
                .push_str(truncate(attr.key.into_inner(), MAX_SEGMENT));
            let name = self.path.clone();
            self.path.truncate(base);
            sink.push(Target::new(
                Location::Body,
                name,
                Part::Value,
                value.into_owned(),
            ));
        }
        if processed && !sink.full {
            let tag = format!("<{}>", &**e);
            let name = format!("{}/<tag>", self.path);
            sink.push(Target::new(Location::Body, name, Part::Value, tag));
        }
        Ok(())
    }

    /// Closes the open element (its text flushed). An element with mixed content — text of
    /// its own and, in all, more than one run of text that is not blank, so child elements
    /// split it — is also a target holding its joined text: its own text and its
    /// descendants', in document order, as DOM's `getTextContent()` and XPath's `string()`
    /// read it (`<q>1' UNI<b/>ON SELECT …</q>` is `1' UNION SELECT …`). Each piece stays a
    /// target of its own. Such elements nested more than [`MAX_MIXED_NESTING`] deep are
    /// [`Problem::TooDeep`]. Joined texts are derived targets, not counted toward the target
    /// limit: they are made while their total length stays within [`JOINED_PER_BYTE`] times the
    /// body's ([`Doc::joined_budget`]); a joined text past it makes the body rule 1002.
    fn close(&mut self, here: usize, sink: &mut Sink<'a, '_>) -> Result<(), Problem> {
        let Some(f) = self.open.pop() else {
            return Ok(());
        };
        let joined = f.own_text && self.runs.saturating_sub(f.runs) > 1;
        let nested = f.nested + usize::from(joined);
        if nested > MAX_MIXED_NESTING {
            return Err(Problem::TooDeep { at: here });
        }
        let value = self.text.get(f.text..).unwrap_or_default();
        if joined && !sink.full {
            // Past the budget the joined text is not made, and the body does not pass: a split
            // attack behind enough nested mixed content would otherwise go unread.
            let Some(left) = self.joined_budget.checked_sub(value.len()) else {
                return Err(Problem::TooDeep { at: here });
            };
            self.joined_budget = left;
            sink.push_uncounted(Target::new_derived(
                Location::Body,
                self.path.clone(),
                Part::Value,
                value.to_string(),
            ));
        }
        match self.open.last_mut() {
            Some(parent) => parent.nested = parent.nested.max(nested),
            None => self.text.clear(),
        }
        self.path.truncate(f.path);
        Ok(())
    }

    fn text(&mut self, t: Cow<'a, str>, here: usize) -> Result<(), Problem> {
        if self.open.is_empty() {
            if t.trim().is_empty() {
                return Ok(());
            }
            return Err(Problem::Malformed { at: here });
        }
        match &mut self.pending {
            None => self.pending = Some(t),
            Some(p) => p.to_mut().push_str(&t),
        }
        Ok(())
    }

    /// Ends the current run of text: a target unless it is blank.
    fn flush(&mut self, sink: &mut Sink<'a, '_>) {
        let Some(t) = self.pending.take() else {
            return;
        };
        self.text.push_str(&t);
        if t.trim().is_empty() {
            return;
        }
        self.runs += 1;
        if let Some(f) = self.open.last_mut() {
            f.own_text = true;
        }
        sink.push(Target::new(
            Location::Body,
            self.path.clone(),
            Part::Value,
            t,
        ));
    }
}
