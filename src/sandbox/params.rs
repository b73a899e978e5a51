//! Bot API parameters from any of the encodings the real API accepts: URL
//! query, JSON body, `application/x-www-form-urlencoded` body, and
//! `multipart/form-data` (text fields and uploaded files).
//!
//! Owns decoding into one flat name -> value map. Leaves the meaning of the
//! parameters (which are required, what is valid) to `state`.
//!
//! Invariant: body parameters override query parameters of the same name;
//! a body is never read past the configured size; a body with another content
//! type is ignored, as the Bot API ignores it. A name given more than once
//! (twice in the query, in a form or JSON object, or in both query and
//! body) is remembered as [`Params::repeated`], for callers that refuse the
//! ambiguity (the agent's drop-in does).

use std::collections::BTreeMap;

use axum::body::to_bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;

/// One parameter value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    /// An uploaded file; its bytes are counted, not kept.
    File {
        name: Option<String>,
        size: usize,
    },
}

/// Why a request's parameters could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// The JSON body is not a JSON object.
    Json,
    /// The multipart body is malformed.
    Multipart,
    /// The body is larger than the configured limit.
    TooLarge,
}

/// The decoded parameters of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, Value>,
    /// The first name that was given more than once.
    repeated: Option<String>,
}

impl Params {
    pub fn insert(&mut self, name: impl Into<String>, value: Value) {
        let name = name.into();
        if self.values.contains_key(&name) && self.repeated.is_none() {
            self.repeated = Some(name.clone());
        }
        self.values.insert(name, value);
    }

    /// The first parameter name the request gave more than once; the later
    /// value is the one kept.
    pub fn repeated(&self) -> Option<&str> {
        self.repeated.as_deref()
    }

    /// A text parameter; `None` when absent or a file.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// Whether a file parameter (`photo`, `document`) is given, as an upload
    /// or as a non-empty file id / URL.
    pub fn has_file(&self, name: &str) -> bool {
        match self.values.get(name) {
            Some(Value::File { .. }) => true,
            Some(Value::Text(t)) => !t.trim().is_empty(),
            None => false,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.values.iter()
    }

    fn extend_form(&mut self, encoded: &[u8]) {
        for (k, v) in form_urlencoded::parse(encoded) {
            self.insert(k.into_owned(), Value::Text(v.into_owned()));
        }
    }

    fn extend_json(&mut self, body: &[u8]) -> Result<(), ParamError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let Pairs(object) = serde_json::from_slice(body).map_err(|_| ParamError::Json)?;
        for (k, v) in object {
            let text = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s,
                // Numbers, booleans and JSON-serialized objects (reply_markup)
                // arrive as their JSON text, as in the form encoding.
                other => other.to_string(),
            };
            self.insert(k, Value::Text(text));
        }
        Ok(())
    }
}

/// A JSON object's members in order, duplicates kept (a map would keep
/// only the last of them).
struct Pairs(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    out.push(pair);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Reads the query and, by content type, the body of `req`.
pub async fn read(req: Request, max_body: usize) -> Result<Params, ParamError> {
    let mut params = Params::default();
    if let Some(query) = req.uri().query() {
        params.extend_form(query.as_bytes());
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" => {
            let body = to_bytes(req.into_body(), max_body)
                .await
                .map_err(|_| ParamError::TooLarge)?;
            params.extend_json(&body)?;
        }
        "application/x-www-form-urlencoded" => {
            let body = to_bytes(req.into_body(), max_body)
                .await
                .map_err(|_| ParamError::TooLarge)?;
            params.extend_form(&body);
        }
        "multipart/form-data" => read_multipart(req, &mut params).await?,
        _ => {}
    }
    Ok(params)
}

async fn read_multipart(req: Request, params: &mut Params) -> Result<(), ParamError> {
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|_| ParamError::Multipart)?;
    let too_large = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ParamError::TooLarge
        } else {
            ParamError::Multipart
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(too_large)? {
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        match field.file_name().map(str::to_owned) {
            Some(file_name) => {
                let bytes = field.bytes().await.map_err(too_large)?;
                let value = Value::File {
                    name: Some(file_name),
                    size: bytes.len(),
                };
                params.insert(name, value);
            }
            None => {
                let text = field.text().await.map_err(too_large)?;
                params.insert(name, Value::Text(text));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(uri: &str, content_type: Option<&str>, body: &str) -> Request {
        let mut builder = Request::builder().method("POST").uri(uri);
        if let Some(ct) = content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn json_numbers_and_objects_become_text_and_override_the_query() {
        let req = request(
            "/x?chat_id=1&parse_mode=HTML",
            Some("application/json; charset=utf-8"),
            r#"{"chat_id":-100123,"text":"hi","reply_markup":{"a":1},"x":null}"#,
        );
        let p = read(req, 1024).await.unwrap();
        assert_eq!(p.text("chat_id"), Some("-100123"));
        assert_eq!(p.text("parse_mode"), Some("HTML"));
        assert_eq!(p.text("reply_markup"), Some(r#"{"a":1}"#));
        assert_eq!(p.get("x"), None);
    }

    #[tokio::test]
    async fn form_and_query_are_percent_decoded() {
        let req = request(
            "/x?text=a%20b",
            Some("application/x-www-form-urlencoded"),
            "chat_id=5&caption=caf%C3%A9+ok",
        );
        let p = read(req, 1024).await.unwrap();
        assert_eq!(p.text("text"), Some("a b"));
        assert_eq!(p.text("caption"), Some("café ok"));
        assert_eq!(p.text("chat_id"), Some("5"));
    }

    #[tokio::test]
    async fn bad_json_and_oversized_bodies_are_errors() {
        let req = request("/x", Some("application/json"), "[1,2]");
        assert_eq!(read(req, 1024).await, Err(ParamError::Json));
        let req = request("/x", Some("application/json"), &"x".repeat(2048));
        assert_eq!(read(req, 1024).await, Err(ParamError::TooLarge));
        let req = request("/x", Some("application/json"), "  ");
        assert_eq!(read(req, 1024).await, Ok(Params::default()));
    }

    #[tokio::test]
    async fn multipart_reads_text_fields_and_counts_file_bytes() {
        let body = "--XyZ\r\n\
            Content-Disposition: form-data; name=\"chat_id\"\r\n\r\n\
            42\r\n\
            --XyZ\r\n\
            Content-Disposition: form-data; name=\"photo\"; filename=\"a.png\"\r\n\
            Content-Type: image/png\r\n\r\n\
            PNGDATA\r\n\
            --XyZ--\r\n";
        let req = request("/x", Some("multipart/form-data; boundary=XyZ"), body);
        let p = read(req, 4096).await.unwrap();
        assert_eq!(p.text("chat_id"), Some("42"));
        assert_eq!(
            p.get("photo"),
            Some(&Value::File {
                name: Some("a.png".into()),
                size: 7
            })
        );
        assert!(p.has_file("photo"));
        assert!(!p.has_file("document"));
    }

    #[tokio::test]
    async fn other_content_types_are_ignored() {
        let req = request("/x?chat_id=1", Some("text/plain"), "chat_id=2");
        let p = read(req, 1024).await.unwrap();
        assert_eq!(p.text("chat_id"), Some("1"));
    }
}
