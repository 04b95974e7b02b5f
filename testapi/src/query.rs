//! URL query strings: percent-decoding and the list/watch parameters.

use crate::error::ApiError;
use crate::kinds::Kind;
use crate::list::ListQuery;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::watch::WatchQuery;
use std::collections::HashMap;
use std::time::Duration;

/// Decode `application/x-www-form-urlencoded` text.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parsed query parameters (last value wins).
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(query: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(decode(k), decode(v));
        }
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }

    fn selectors(&self, kind: &Kind) -> Result<Selectors, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or(""), kind)?,
        })
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::BadRequest(format!("invalid {key}: {v:?}"))),
        }
    }

    pub fn list_query(&self, kind: &Kind, namespace: Option<&str>) -> Result<ListQuery, ApiError> {
        Ok(ListQuery {
            namespace: namespace.map(str::to_string),
            selectors: self.selectors(kind)?,
            limit: self.number("limit")?.map(|l| l as usize),
            continue_token: self.get("continue").map(str::to_string),
        })
    }

    pub fn watch_query(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
    ) -> Result<WatchQuery, ApiError> {
        Ok(WatchQuery {
            namespace: namespace.map(str::to_string),
            selectors: self.selectors(kind)?,
            resource_version: self.get("resourceVersion").map(str::to_string),
            bookmarks: self.flag("allowWatchBookmarks"),
            timeout: self
                .number("timeoutSeconds")?
                .filter(|t| *t > 0)
                .map(Duration::from_secs),
            send_initial_events: self.flag("sendInitialEvents"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(decode("app%3Dweb%2Ctier+x"), "app=web,tier x");
        assert_eq!(decode("bad%zz%"), "bad%zz%");
        let p = Params::parse(Some("watch=1&labelSelector=a%3Db&limit=5"));
        assert!(p.flag("watch"));
        assert_eq!(p.get("labelSelector"), Some("a=b"));
    }
}
