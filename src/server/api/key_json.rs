//! How a key and its value appear in a JSON body: one rule for every body that carries
//! values (a listing today; watch events and transactions later).
//!
//! `"value"` holds the value as a string when it is valid UTF-8; otherwise the field is
//! `"value_base64"` instead, the value in standard base64 with padding (RFC 4648 §4).
//! Exactly one of the two is present. Keys are UTF-8 (the API refuses others), so
//! `"key"` is always a string. The revisions are `kv::Value`'s, with etcd v3's meanings.

use base64::Engine;

use crate::kv::Value;

/// `{"key", "value" | "value_base64", "create_revision", "mod_revision", "version"}`,
/// and `"lease"` (16 hex digits) when the key is attached to one.
pub fn key_json(key: &[u8], value: &Value) -> serde_json::Value {
    let mut item = serde_json::json!({
        "key": String::from_utf8_lossy(key),
        "create_revision": value.create_revision,
        "mod_revision": value.mod_revision,
        "version": value.version,
    });
    let (field, text) = value_field(&value.data);
    item[field] = text.into();
    if value.lease != 0 {
        item["lease"] = super::leases::id_text(value.lease).into();
    }
    item
}

/// The field name and string a value is carried in: `("value", text)` for UTF-8, else
/// `("value_base64", base64)`.
pub fn value_field(data: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(data) {
        Ok(text) => ("value", text.to_owned()),
        Err(_) => ("value_base64", base64::engine::general_purpose::STANDARD.encode(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_utf8_value_is_a_string_and_anything_else_is_base64() {
        assert_eq!(value_field(b"blue"), ("value", "blue".to_owned()));
        assert_eq!(value_field("grün".as_bytes()), ("value", "grün".to_owned()));
        assert_eq!(value_field(b""), ("value", String::new()));
        // RFC 4648 §10's vectors, made invalid UTF-8 by a leading 0xff.
        assert_eq!(value_field(&[0xff]), ("value_base64", "/w==".to_owned()));
        assert_eq!(value_field(&[0xff, b'f']), ("value_base64", "/2Y=".to_owned()));
        assert_eq!(value_field(&[0xff, b'f', b'o']), ("value_base64", "/2Zv".to_owned()));
        assert_eq!(value_field(&[0, 159, 146, 150]), ("value_base64", "AJ+Slg==".to_owned()));
    }

    #[test]
    fn a_key_carries_its_three_revisions_and_one_value_field() {
        let value = Value {
            data: vec![0xc3, 0x28].into(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: 0,
        };
        let item = key_json(b"k", &value);
        assert_eq!(
            item,
            serde_json::json!({
                "key": "k", "value_base64": "wyg=", "create_revision": 3, "mod_revision": 9, "version": 4
            })
        );
        assert!(item.get("value").is_none());
        let text = key_json(b"k", &Value::created("v".into(), 5));
        assert_eq!(text["value"], "v");
        assert!(text.get("value_base64").is_none());
    }
}
