//! Exported user documents kept exactly as Auth0 wrote them: top-level entries verbatim.
//!
//! A served profile must equal the exported line as a JSON value for every legal document:
//! numbers with every digit, strings with every escape (U+0000 included, which jsonb refuses).
//! So documents are stored as text and never pass through a lossy `Value`; merging splices the
//! enrichments into the object's top level and copies every other value's text unchanged.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The members a merged profile adds to the exported object.
pub const ENRICHMENT_KEYS: [&str; 5] =
    ["roles", "authentication_methods", "authenticators", "enrollments", "enrichment_error"];

/// Appends members to a JSON object's text without parsing it. Only for objects known to have
/// no member of those names (see [`Entries::is_plain`]): the result is then the same JSON value
/// as [`Entries::merge`] gives, at the cost of a copy.
pub fn splice(object: &str, extra: &[(&str, &str)]) -> String {
    let body = object.trim_end().strip_suffix('}').unwrap_or(object);
    let empty = body.trim_start().strip_prefix('{').is_some_and(|inner| inner.trim().is_empty());
    let mut out =
        String::with_capacity(object.len() + extra.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 1);
    out.push_str(body);
    for (i, (key, value)) in extra.iter().enumerate() {
        if i > 0 || !empty {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).expect("a string serialises"));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

/// The top-level members of a JSON object, each value as its original text.
pub struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Entries<'a> {
    /// Parses a JSON object; anything else is an error.
    pub fn parse(text: &'a str) -> serde_json::Result<Entries<'a>> {
        serde_json::from_str(text)
    }

    /// Whether no member is named like an enrichment, so [`splice`] may append them.
    pub fn is_plain(&self) -> bool {
        !self.0.iter().any(|(k, _)| ENRICHMENT_KEYS.contains(&k.as_str()))
    }

    /// The value of `key`; the last one wins when a key repeats, as in Postgres and most parsers.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The object with `extra` members set (replacing members of the same name), as JSON text.
    pub fn merge(&self, extra: &[(&str, &str)]) -> String {
        let mut out =
            String::with_capacity(self.0.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + 64);
        out.push('{');
        let mut first = true;
        let mut push = |out: &mut String, key: &str, value: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&serde_json::to_string(key).expect("a string serialises"));
            out.push(':');
            out.push_str(value);
        };
        for (i, (key, value)) in self.0.iter().enumerate() {
            let replaced = extra.iter().any(|(k, _)| k == key);
            let repeated_later = self.0[i + 1..].iter().any(|(k, _)| k == key);
            if !replaced && !repeated_later {
                push(&mut out, key, value.get());
            }
        }
        for (key, value) in extra {
            push(&mut out, key, value);
        }
        out.push('}');
        out
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(24));
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(ObjectVisitor).map_err(de::Error::custom)
    }
}

/// The keys of one exported line the service indexes, read without copying the rest.
#[derive(Debug, PartialEq, Eq)]
pub struct LineKeys {
    pub user_id: String,
    pub email: Option<String>,
    /// `identities[0].connection`.
    pub connection: Option<String>,
}

impl LineKeys {
    /// Reads the keys of an exported line (a JSON object with a string `user_id`). Postgres text
    /// cannot hold U+0000, so in these index columns only (never in the served document) a real
    /// U+0000 becomes U+FFFD.
    pub fn read(entries: &Entries) -> Result<LineKeys, String> {
        let string = |key: &str| -> Result<Option<String>, String> {
            match entries.get(key) {
                None => Ok(None),
                Some(raw) => match serde_json::from_str::<Option<String>>(raw.get()) {
                    Ok(s) => Ok(s.map(|s| s.replace('\0', "\u{fffd}"))),
                    Err(_) => Err(format!("{key} is not a string")),
                },
            }
        };
        let user_id = string("user_id")?.ok_or("no user_id")?;
        let email = string("email").unwrap_or(None);
        #[derive(serde::Deserialize)]
        struct Identity {
            connection: Option<String>,
        }
        let connection = entries
            .get("identities")
            .and_then(|raw| serde_json::from_str::<Vec<Identity>>(raw.get()).ok())
            .and_then(|ids| ids.into_iter().next())
            .and_then(|i| i.connection)
            .map(|c| c.replace('\0', "\u{fffd}"));
        Ok(LineKeys { user_id, email, connection })
    }
}

/// A CSV cell from a top-level value: strings decoded, everything else in its exported spelling.
pub fn csv_text(value: Option<&RawValue>) -> String {
    csv_text_of(value.map(RawValue::get))
}

/// [`csv_text`] of a value's JSON text.
pub fn csv_text_of(value: Option<&str>) -> String {
    match value {
        None | Some("null") => String::new(),
        Some(text) if text.starts_with('"') => serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_owned()),
        Some(text) => text.to_owned(),
    }
}

/// A CSV cell that no spreadsheet runs as a formula: text starting with `=`, `+`, `-`, `@`, a tab
/// or a carriage return gets a leading `'` (OWASP's advice), unless it is a plain number.
pub fn csv_safe(cell: String) -> String {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && !is_plain_number(&cell) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// `-12`, `+3.5`, `-1e9`: a number as spreadsheets and JSON write it, nothing else.
fn is_plain_number(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (mantissa, exponent) = match digits.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (digits, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty())
        && all_digits(whole)
        && all_digits(fraction)
        && exponent.map_or(true, |e| !e.is_empty() && all_digits(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_like_cells_are_neutralised_and_numbers_stay_numbers() {
        for (cell, safe) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1 555 0100", "'+1 555 0100"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tcmd", "'\tcmd"),
            ("\rcmd", "'\rcmd"),
            ("-", "'-"),
            ("-e5", "'-e5"),
            ("1e", "1e"),
            ("-12", "-12"),
            ("+3.5", "+3.5"),
            ("-1.5e-300", "-1.5e-300"),
            ("-.5", "-.5"),
            ("plain", "plain"),
            ("a=b", "a=b"),
            ("", ""),
            ("[{\"name\":\"=x\"}]", "[{\"name\":\"=x\"}]"),
        ] {
            assert_eq!(csv_safe(cell.to_owned()), safe, "{cell:?}");
        }
    }

    #[test]
    fn values_keep_their_exact_text() {
        let line = r#"{"user_id":"auth0|1","n":123456789012345678901234567890,"d":0.1000000000000000055511151231257827,"e":1.5e300,"s":"\\u0000 and \u0000 and \/ \ud83d\ude00 \\ud800","":1,"Key":1,"key":2}"#;
        let entries = Entries::parse(line).unwrap();
        let merged = entries.merge(&[("roles", "[]")]);
        assert_eq!(
            merged,
            r#"{"user_id":"auth0|1","n":123456789012345678901234567890,"d":0.1000000000000000055511151231257827,"e":1.5e300,"s":"\\u0000 and \u0000 and \/ \ud83d\ude00 \\ud800","":1,"Key":1,"key":2,"roles":[]}"#
        );
        assert_eq!(entries.get("n").unwrap().get(), "123456789012345678901234567890");
    }

    #[test]
    fn splicing_equals_merging_for_plain_objects() {
        for text in [r#"{"a":1,"a":2,"b":[1,{"c":"}"}]}"#, "{}", " { } ", r#"{"user_id":"x"}  "#] {
            let entries = Entries::parse(text).unwrap();
            assert!(entries.is_plain());
            let extra = [("roles", "[]"), ("enrichment_error", "\"user_not_found\"")];
            let spliced: serde_json::Value = serde_json::from_str(&splice(text, &extra)).unwrap();
            let merged: serde_json::Value = serde_json::from_str(&entries.merge(&extra)).unwrap();
            assert_eq!(spliced, merged, "{text}");
        }
        assert!(!Entries::parse(r#"{"roles":1}"#).unwrap().is_plain());
        assert_eq!(splice("{}", &[]), "{}");
    }

    #[test]
    fn merge_replaces_same_named_members_and_repeated_keys_keep_the_last() {
        let entries = Entries::parse(r#"{"a":1,"roles":"x","a":2}"#).unwrap();
        assert_eq!(entries.merge(&[("roles", "[1]")]), r#"{"a":2,"roles":[1]}"#);
        assert_eq!(Entries::parse("{}").unwrap().merge(&[]), "{}");
        assert!(Entries::parse("[1]").is_err());
        assert!(Entries::parse(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn keys_with_nul_are_safe_for_text_columns() {
        let line = r#"{"user_id":"a\u0000b","email":"x@y","identities":[{"connection":"c\u0000"}]}"#;
        let keys = LineKeys::read(&Entries::parse(line).unwrap()).unwrap();
        assert_eq!(
            keys,
            LineKeys { user_id: "a\u{fffd}b".into(), email: Some("x@y".into()), connection: Some("c\u{fffd}".into()) }
        );
        assert!(LineKeys::read(&Entries::parse(r#"{"email":"x"}"#).unwrap()).is_err());
        assert_eq!(csv_text(Entries::parse(r#"{"s":"a\"b"}"#).unwrap().get("s")), "a\"b");
    }
}
