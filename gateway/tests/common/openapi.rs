//! `docs/openapi.json` held against real answers: the status must be documented for the
//! operation, the body must satisfy the documented schema, and required headers must be there.
//!
//! The schema check covers the keywords the document uses: `$ref`, `allOf`, `type`, `const`,
//! `enum`, `pattern`, `format: uuid`, `required` and `properties`.

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::Value;

use super::raw::RawReply;

const DOCUMENT: &str = include_str!("../../../docs/openapi.json");
const OPERATION: [&str; 3] = ["paths", "/v1/webhooks/scans/{patient_id}", "post"];

pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    pub fn load() -> Self {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."), "OpenAPI 3.1");
        Self { doc }
    }

    fn operation(&self) -> &Value {
        let operation = OPERATION.iter().fold(&self.doc, |node, key| &node[*key]);
        assert!(operation.is_object(), "the scan operation is documented");
        operation
    }

    /// Every status the document gives the operation.
    pub fn statuses(&self) -> BTreeSet<u16> {
        self.operation()["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|code| code.parse().expect("numeric status"))
            .collect()
    }

    /// Panics, saying why, unless `reply` is an answer the document describes.
    pub fn check(&self, reply: &RawReply, what: &str) {
        let response = self.resolve(&self.operation()["responses"][reply.status.to_string()]);
        assert!(response.is_object(), "{what}: status {} is not documented", reply.status);

        if let Some(headers) = response["headers"].as_object() {
            for (name, header) in headers {
                let header = self.resolve(header);
                if header["required"] == Value::Bool(true) {
                    let lower = name.to_ascii_lowercase();
                    assert!(reply.header(&lower).is_some(), "{what}: header {name} missing");
                }
            }
        }
        if let Some(content) = response["content"].as_object() {
            let (media, described) = content.iter().next().expect("one media type");
            let sent = reply.header("content-type").unwrap_or_default();
            assert_eq!(sent, media, "{what}: content type");
            let body: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|_| {
                panic!("{what}: body is not JSON: {:?}", String::from_utf8_lossy(&reply.body))
            });
            if let Err(problem) = self.validate(&described["schema"], &body, "$") {
                panic!("{what}: {problem} in {body}");
            }
        }
    }

    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        match node["$ref"].as_str() {
            Some(reference) => {
                let path = reference.strip_prefix("#/").expect("local reference");
                let target = path.split('/').fold(&self.doc, |node, key| &node[key]);
                self.resolve(target)
            }
            None => node,
        }
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(all) = schema["allOf"].as_array() {
            for part in all {
                self.validate(part, value, at)?;
            }
        }
        if let Some(kind) = schema["type"].as_str()
            && !has_type(value, kind)
        {
            return Err(format!("{at} is not of type {kind}"));
        }
        if let Some(expected) = schema.get("const")
            && expected != value
        {
            return Err(format!("{at} is not {expected}"));
        }
        if let Some(options) = schema["enum"].as_array()
            && !options.contains(value)
        {
            return Err(format!("{at} = {value} is not one of {options:?}"));
        }
        if let (Some(pattern), Some(text)) = (schema["pattern"].as_str(), value.as_str()) {
            let regex = Regex::new(pattern).expect("documented pattern compiles");
            if !regex.is_match(text) {
                return Err(format!("{at} = {text:?} does not match {pattern}"));
            }
        }
        if schema["format"] == "uuid"
            && value.as_str().is_some_and(|v| v.parse::<uuid::Uuid>().is_err())
        {
            return Err(format!("{at} is not a UUID"));
        }
        if let Some(required) = schema["required"].as_array() {
            for name in required.iter().filter_map(Value::as_str) {
                if value.get(name).is_none() {
                    return Err(format!("{at}.{name} is missing"));
                }
            }
        }
        if let (Some(properties), Some(object)) =
            (schema["properties"].as_object(), value.as_object())
        {
            for (name, property) in properties {
                if let Some(inner) = object.get(name) {
                    self.validate(property, inner, &format!("{at}.{name}"))?;
                }
            }
            if schema["additionalProperties"] == Value::Bool(false)
                && let Some(extra) = object.keys().find(|k| !properties.contains_key(*k))
            {
                return Err(format!("{at}.{extra} is not documented"));
            }
        }
        Ok(())
    }
}

fn has_type(value: &Value, kind: &str) -> bool {
    match kind {
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => false,
    }
}
