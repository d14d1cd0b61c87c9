//! Content codings (RFC 9110 §8.4): which one a client accepts, by its
//! Accept-Encoding (§12.5.3), which one a response is in, and the head of
//! a response whose body pibl codes or decodes.  The coders themselves are
//! `codec`'s.

use super::{Field, ResponseHead};

/// A content coding pibl can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    /// Its token in Content-Encoding.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    fn named(token: &str) -> Option<Coding> {
        if token.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            // RFC 9110 §8.4.1.3: x-gzip is gzip.
            Some(Coding::Gzip)
        } else {
            None
        }
    }
}

impl Coding {
    /// The coding a response's body is in, when it is one coding pibl can
    /// decode (none, or several stacked, is `None`).
    pub fn of_response(resp: &ResponseHead) -> Option<Coding> {
        let mut codings = super::values(&resp.fields, "content-encoding");
        let only = std::str::from_utf8(codings.next()?).ok()?;
        if codings.next().is_some() || only.contains(',') {
            return None;
        }
        Coding::named(only.trim())
    }
}

/// Whether the client of a request with `fields` takes `coding`.
pub fn accepts(fields: &[Field], coding: Coding) -> bool {
    negotiate(fields, &[coding]).is_some()
}

/// The coding to send a client whose request has `fields`, among
/// `offered` (in pibl's order of preference): the one the client prefers
/// (highest qvalue), ties going to pibl's order; `None` for the content as
/// it is.  A request without Accept-Encoding, or with one that does not
/// parse, gets none: a client that did not ask is never sent a coding.
pub fn negotiate(fields: &[Field], offered: &[Coding]) -> Option<Coding> {
    let mut prefs = Vec::new();
    let mut present = false;
    for value in super::values(fields, "accept-encoding") {
        present = true;
        parse_into(value, &mut prefs)?;
    }
    if !present {
        return None;
    }
    let weight = |coding: Coding| -> u16 {
        let named = prefs.iter().find(|p| p.coding == Some(coding));
        let any = prefs.iter().find(|p| p.wildcard);
        named.or(any).map_or(0, |p| p.q)
    };
    let mut best: Option<(Coding, u16)> = None;
    for &coding in offered {
        let q = weight(coding);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

/// One element of Accept-Encoding: a coding pibl knows, `*`, or another
/// (kept only so that it does not count as `*`); q in thousandths.
struct Preference {
    coding: Option<Coding>,
    wildcard: bool,
    q: u16,
}

/// Adds the elements of one Accept-Encoding value to `prefs`; `None` when
/// it does not parse.  An empty value is no element: only identity is
/// acceptable then.
fn parse_into(value: &[u8], prefs: &mut Vec<Preference>) -> Option<()> {
    let text = std::str::from_utf8(value).ok()?;
    for element in text.split(',') {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            continue;
        }
        let mut parts = element.split(';');
        let token = parts.next()?.trim_matches([' ', '\t']);
        if token.is_empty() || !token.bytes().all(is_tchar) {
            return None;
        }
        let mut q = 1000;
        for param in parts {
            // OWS ";" OWS name "=" value: no whitespace around the "=".
            let (name, v) = param.split_once('=')?;
            let name = name.trim_start_matches([' ', '\t']);
            if name.is_empty() || !name.bytes().all(is_tchar) || v.starts_with([' ', '\t']) {
                return None;
            }
            if name.eq_ignore_ascii_case("q") {
                q = qvalue(v.trim_end_matches([' ', '\t']))?;
            }
        }
        prefs.push(Preference {
            coding: Coding::named(token),
            wildcard: token == "*",
            q,
        });
    }
    Some(())
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Adds `Accept-Encoding` to Vary, unless it is there (or Vary is `*`).
pub fn add_vary(resp: &mut ResponseHead) {
    if !varies_by_coding(resp) {
        resp.fields.push(Field {
            name: "Vary".into(),
            value: b"Accept-Encoding".to_vec(),
        });
    }
}

/// Vary's value with `Accept-Encoding` added, for a response that does
/// not say it yet; `None` if it does.
pub fn vary_value(resp: &ResponseHead) -> Option<String> {
    if varies_by_coding(resp) {
        return None;
    }
    let mut value = String::new();
    for v in super::values(&resp.fields, "vary") {
        value.push_str(&String::from_utf8_lossy(v));
        value.push_str(", ");
    }
    value.push_str("Accept-Encoding");
    Some(value)
}

/// Whether Vary already covers Accept-Encoding (by name, or `*`).
pub fn varies_by_coding(resp: &ResponseHead) -> bool {
    super::tokens(&resp.fields, "vary")
        .iter()
        .any(|t| t == "*" || t.eq_ignore_ascii_case("accept-encoding"))
}

/// The head of `resp` with its body in `coding`: Content-Encoding said,
/// the length and Accept-Ranges gone (they were the identity body's), a
/// strong ETag made weak (RFC 9110 §8.8.1: the bytes differ), Vary.
pub fn encoded_head(resp: &ResponseHead, coding: Coding) -> ResponseHead {
    let mut head = recoded(resp);
    head.fields.push(Field {
        name: "Content-Encoding".into(),
        value: coding.token().as_bytes().to_vec(),
    });
    head
}

/// The head of `resp`, a coded response, with its body decoded: as
/// `encoded_head`, without Content-Encoding.
pub fn decoded_head(resp: &ResponseHead) -> ResponseHead {
    let mut head = recoded(resp);
    head.fields
        .retain(|f| !f.name.eq_ignore_ascii_case("content-encoding"));
    head
}

/// `resp` for other bytes of the same content: no length or ranges, a
/// weak ETag, Vary.
fn recoded(resp: &ResponseHead) -> ResponseHead {
    let mut head = resp.clone();
    head.fields.retain(|f| {
        !f.name.eq_ignore_ascii_case("content-length")
            && !f.name.eq_ignore_ascii_case("accept-ranges")
    });
    for field in &mut head.fields {
        if field.name.eq_ignore_ascii_case("etag") && !field.value.starts_with(b"W/") {
            field.value.splice(0..0, *b"W/");
        }
    }
    add_vary(&mut head);
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Coding; 2] = [Coding::Br, Coding::Gzip];

    fn fields(values: &[&str]) -> Vec<Field> {
        values
            .iter()
            .map(|v| Field {
                name: "Accept-Encoding".into(),
                value: v.as_bytes().to_vec(),
            })
            .collect()
    }

    fn pick(values: &[&str]) -> Option<Coding> {
        negotiate(&fields(values), &BOTH)
    }

    #[test]
    fn the_clients_preference_then_pibls_order() {
        assert_eq!(
            pick(&["gzip, deflate, br"]),
            Some(Coding::Br),
            "tie: pibl's order"
        );
        assert_eq!(pick(&["gzip;q=1.0, br;q=0.5"]), Some(Coding::Gzip));
        assert_eq!(pick(&["br;q=0.001, gzip;q=0.002"]), Some(Coding::Gzip));
        assert_eq!(pick(&["GZIP"]), Some(Coding::Gzip));
        assert_eq!(pick(&["x-gzip"]), Some(Coding::Gzip));
        assert_eq!(
            pick(&["deflate", "gzip"]),
            Some(Coding::Gzip),
            "fields combine"
        );
        assert_eq!(pick(&["*"]), Some(Coding::Br));
        assert_eq!(
            pick(&["*;q=0.5, br;q=0.1"]),
            Some(Coding::Gzip),
            "named beats *"
        );
        assert_eq!(
            negotiate(&fields(&["br, gzip"]), &[Coding::Gzip]),
            Some(Coding::Gzip)
        );
    }

    #[test]
    fn refusals_and_absence_mean_identity() {
        assert_eq!(negotiate(&[], &BOTH), None, "no field: not asked");
        assert_eq!(pick(&[""]), None, "empty: identity only");
        assert_eq!(pick(&["identity"]), None);
        assert_eq!(pick(&["gzip;q=0, br;q=0"]), None);
        assert_eq!(pick(&["*;q=0"]), None);
        assert_eq!(pick(&["br;q=0, *"]), Some(Coding::Gzip));
        assert_eq!(
            pick(&["identity;q=0"]),
            None,
            "nothing else offered by the client"
        );
        assert_eq!(pick(&["gzip, identity;q=0"]), Some(Coding::Gzip));
    }

    #[test]
    fn malformed_is_absent() {
        for bad in [
            "gzip;q=2",
            "gzip;q=0.5555",
            "gzip;q=",
            "gzip;q=abc",
            "gz ip",
            "gzip;q",
            ";q=1",
            "gzip;q=1.5",
        ] {
            assert_eq!(pick(&[bad]), None, "{bad}");
        }
        assert_eq!(
            pick(&["gzip ; q=0.8 , br ; q = 0.9"]),
            None,
            "spaces around = are not allowed"
        );
        assert_eq!(pick(&["gzip ;q=0.8, br;q=0.9 "]), Some(Coding::Br));
        assert_eq!(
            pick(&["gzip;level=1"]),
            Some(Coding::Gzip),
            "other parameters ignored"
        );
    }
}
