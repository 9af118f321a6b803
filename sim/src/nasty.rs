//! The nastiest legal JSON real tenants hold, as exact JSON text spliced into generated users.
//!
//! serde_json's `Value` cannot hold `123456789012345678901234567890` or `-0` verbatim, nor remember
//! that a string was written `"\/"` or `"\ud83d\ude00"`; so users are kept as raw JSON text per
//! top-level key ([`RawUser`]) and these fragments are written as text.

use serde_json::value::RawValue;
use serde_json::Value;

use crate::data::Rng;

/// A user as exact JSON text: `(key, value JSON text)` per top-level key, sorted by key.
pub type RawUser = Vec<(String, String)>;

/// `(key JSON text, value JSON text)` pairs spliced into a metadata object.
type RawPairs = Vec<(String, String)>;

/// Everyday nasty entries `(key JSON text, value JSON text)`; every user gets some, most several.
const ENTRIES: [(&str, &str); 14] = [
    // A backslash followed by `u0000`: text, not a NUL.
    (r#""path_win""#, r#""C:\\u0000\\temp\\new""#),
    (r#""quote_slash""#, r#""she said \"hi\" \/ \\ back \\\" end""#),
    // A surrogate pair written as escapes.
    (r#""emoji_escaped""#, r#""\ud83d\ude00 grin \ud83e\udd84 unicorn""#),
    // Lone-looking surrogates that are really escaped backslashes.
    (r#""lone_looking""#, r#""\\ud800 and \\udfff are text""#),
    (r#""separators""#, r#""line\u2028para\u2029end""#),
    // U+2028/U+2029 written raw: legal JSON, illegal JavaScript before ES2019.
    ("\"separators_raw\"", "\"line\u{2028}para\u{2029}end\""),
    (r#""controls""#, r#""\b\f\n\r\t\u001f\u0001 end""#),
    (
        r#""numbers""#,
        "[9007199254740993,-9007199254740993,18446744073709551616,123456789012345678901234567890,-0,1.5e300,6.02214076E23,1E-7,0.1000000000000000055511151231257827,-1.0e-300,2.50,0]",
    ),
    (r#""big_id""#, "123456789012345678901234567890"),
    (r#""ratio""#, "0.1000000000000000055511151231257827"),
    // Keys differing only in case.
    (r#""case""#, r#"{"Key":"upper","key":"lower","KEY":3,"kEy":null}"#),
    // Keys written with escapes.
    (r#""we\"ird\\key\/""#, r#""escaped key""#),
    (r#""caf\u00e9""#, r#""escaped letters \u00e9\u00E9""#),
    // The empty key.
    (r#""""#, r#""empty key""#),
];

/// Nicknames as raw JSON text.
const NICKNAMES: [&str; 6] = [
    r#""C:\\u0000\\temp""#,
    r#""Bobby \"Tables\"'); DROP TABLE users;--""#,
    r#""tab\there\nnew line \u001f unit sep""#,
    r#""\ud83d\ude00 grin \/ slash""#,
    "\"para\u{2029}graph line\u{2028}sep\"",
    r#""looks lone: \\ud800 \\udfff""#,
];

/// Users with a real U+0000 in a metadata string: `idx % NUL_EVERY == NUL_AT`.
pub const NUL_EVERY: u64 = 50;
pub const NUL_AT: u64 = 3;
/// Users with a 64 KiB string.
pub const LONG_EVERY: u64 = 250;
pub const LONG_AT: u64 = 7;
pub const LONG_LEN: usize = 64 * 1024;
/// Users with 64 levels of nested arrays/objects.
pub const DEEP_EVERY: u64 = 100;
pub const DEEP_AT: u64 = 13;
pub const DEEP_LEVELS: usize = 64;

/// Adds the nasty fragments to a plain user (a JSON object) and returns it as raw text per key.
pub fn nastify(plain: Value, rng: &mut Rng, idx: u64) -> RawUser {
    let mut out: RawUser = match plain {
        Value::Object(m) => m.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        _ => Vec::new(),
    };
    let (app, user) = metadata(rng, idx);
    splice_object(&mut out, "app_metadata", &app);
    splice_object(&mut out, "user_metadata", &user);
    // Name-like strings: the same text written with every escape an encoder may use, or nasty content.
    for key in ["name", "nickname", "given_name", "family_name"] {
        let Some(pos) = out.iter().position(|(k, _)| k == key) else { continue };
        match rng.below(6) {
            0 | 1 => {
                if let Ok(s) = serde_json::from_str::<String>(&out[pos].1) {
                    out[pos].1 = escape_everything(&s);
                }
            }
            2 if key == "nickname" => out[pos].1 = (*rng.pick(&NICKNAMES)).to_string(),
            _ => {}
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn metadata(rng: &mut Rng, idx: u64) -> (RawPairs, RawPairs) {
    let mut app = RawPairs::new();
    let mut user = RawPairs::new();
    let mut n = 1 + rng.below(4) as usize;
    if rng.chance(0.3) {
        n += 3;
    }
    let mut picked: Vec<usize> = Vec::with_capacity(n);
    while picked.len() < n.min(ENTRIES.len()) {
        let i = rng.below(ENTRIES.len() as u64) as usize;
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    for i in picked {
        let (k, v) = ENTRIES[i];
        let target = if rng.chance(0.4) { &mut app } else { &mut user };
        target.push((k.to_string(), v.to_string()));
    }
    if idx % NUL_EVERY == NUL_AT {
        user.push((r#""nul""#.into(), r#""before\u0000after""#.into()));
    }
    if idx % LONG_EVERY == LONG_AT {
        app.push((r#""long""#.into(), long_string(rng)));
    }
    if idx % DEEP_EVERY == DEEP_AT {
        user.push((r#""deep""#.into(), deep(DEEP_LEVELS)));
    }
    (app, user)
}

/// A 64 KiB (decoded UTF-8) string mixing ASCII, escapes and multi-byte characters.
fn long_string(rng: &mut Rng) -> String {
    const PIECES: [&str; 6] = ["lorem ipsum ", "\"quoted\" ", "back\\slash ", "é ", "😀 ", "\n"];
    let mut s = String::with_capacity(LONG_LEN + 8);
    while s.len() < LONG_LEN {
        let piece = PIECES[rng.below(PIECES.len() as u64) as usize];
        s.push_str(piece);
    }
    while s.len() > LONG_LEN {
        s.pop();
    }
    serde_json::to_string(&s).unwrap_or_default()
}

/// `n` levels alternating arrays and objects around a string.
fn deep(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(if i % 2 == 0 { "[" } else { "{\"d\":" });
    }
    s.push_str("\"bottom\"");
    for i in (0..n).rev() {
        s.push(if i % 2 == 0 { ']' } else { '}' });
    }
    s
}

fn splice_object(out: &mut RawUser, key: &str, extra: &RawPairs) {
    if extra.is_empty() {
        return;
    }
    let mut body = String::new();
    for (i, (k, v)) in extra.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(k);
        body.push(':');
        body.push_str(v);
    }
    match out.iter_mut().find(|(k, _)| k == key) {
        Some((_, text)) if text.as_str() == "{}" => *text = format!("{{{body}}}"),
        Some((_, text)) => {
            text.pop();
            text.push(',');
            text.push_str(&body);
            text.push('}');
        }
        None => out.push((key.to_string(), format!("{{{body}}}"))),
    }
}

/// Writes `s` as a JSON string escaping `/`, every control character and every non-ASCII code point
/// (astral ones as surrogate pairs), as some encoders do.
pub fn escape_everything(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2 + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses the raw values; numbers outside i64/u64/f64 become lossy floats.
#[cfg(test)]
pub fn to_value(raw: &RawUser) -> Value {
    let mut m = serde_json::Map::new();
    for (k, text) in raw {
        m.insert(k.clone(), serde_json::from_str(text).unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// The JSON text of a member of an object (`key`) given as JSON text.
pub fn member<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let m: Vec<(String, &'a RawValue)> = object_members(text)?;
    m.into_iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.get())
}

/// The JSON text of an element of an array given as JSON text.
pub fn element(text: &str, i: usize) -> Option<&str> {
    let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
    items.get(i).map(|v| v.get())
}

fn object_members(text: &str) -> Option<Vec<(String, &RawValue)>> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Pairs).ok()
}

/// The top-level `(key, JSON text)` pairs of a JSON object text, in text order.
pub fn top_level(text: &str) -> Option<Vec<(String, &str)>> {
    Some(object_members(text)?.into_iter().map(|(k, v)| (k, v.get())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_legal_json() {
        for (k, v) in ENTRIES {
            let k: String = serde_json::from_str(k).unwrap();
            let _: Value = serde_json::from_str(v).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        for n in NICKNAMES {
            let _: String = serde_json::from_str(n).unwrap();
        }
        let d: Value = serde_json::from_str(&deep(DEEP_LEVELS)).unwrap();
        assert!(d.is_array());
        let l: String = serde_json::from_str(&long_string(&mut Rng::new(1))).unwrap();
        assert_eq!(l.len(), LONG_LEN);
        let s = "Zoë \"/\\\n🦄\u{1f}";
        let e = escape_everything(s);
        assert_eq!(e, r#""Zo\u00eb \"\/\\\n\ud83e\udd84\u001f""#);
        assert_eq!(serde_json::from_str::<String>(&e).unwrap(), s);
    }

    #[test]
    fn raw_navigation() {
        let t = r#"{"a":{"":1,"b":[1,123456789012345678901234567890]},"a":2}"#;
        assert_eq!(member(t, "a"), Some("2"));
        let inner = r#"{"":1,"b":[1,123456789012345678901234567890]}"#;
        assert_eq!(element(member(inner, "b").unwrap(), 1), Some("123456789012345678901234567890"));
        assert_eq!(member(inner, ""), Some("1"));
        assert_eq!(member("[1]", "a"), None);
        assert_eq!(top_level(inner).unwrap().len(), 2);
    }
}
