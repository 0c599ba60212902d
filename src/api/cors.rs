//! CORS, off unless `--allowed-origins` is given: which browser origins may call the API,
//! with which methods and headers (tower-http's `CorsLayer`, no credentials).

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// Checked CORS settings; `None` in a list means `*` (any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    origins: Option<Vec<HeaderValue>>,
    methods: Option<Vec<Method>>,
    headers: Option<Vec<HeaderName>>,
}

impl CorsConfig {
    /// From the flags' values. Each flag may be given several times, each value a comma
    /// list or (as vLLM takes them) a JSON list such as `["https://a.example"]`. An
    /// empty `methods` or `headers` means `*`. `None` when no origin is allowed (CORS off).
    pub fn parse(
        origins: &[String],
        methods: &[String],
        headers: &[String],
    ) -> Result<Option<Self>, String> {
        let origins = items(origins, "--allowed-origins")?;
        let methods = items(methods, "--allowed-methods")?;
        let headers = items(headers, "--allowed-headers")?;
        if origins.is_empty() {
            if !methods.is_empty() || !headers.is_empty() {
                return Err(
                    "--allowed-methods and --allowed-headers need --allowed-origins".to_string(),
                );
            }
            return Ok(None);
        }
        let origins = wildcard_or(&origins, |o| {
            HeaderValue::from_str(o)
                .ok()
                .filter(|_| o.contains("://"))
                .ok_or_else(|| {
                    format!("--allowed-origins: {o:?} is not an origin like https://host[:port]")
                })
        })?;
        let methods = wildcard_or(&methods, |m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("--allowed-methods: {m:?} is not an HTTP method"))
        })?;
        let headers = wildcard_or(&headers, |h| {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("--allowed-headers: {h:?} is not a header name"))
        })?;
        Ok(Some(Self {
            origins,
            methods: methods.filter(|m| !m.is_empty()),
            headers: headers.filter(|h| !h.is_empty()),
        }))
    }

    /// The layer that answers preflights and adds `Access-Control-*` headers.
    pub fn layer(&self) -> CorsLayer {
        CorsLayer::new()
            .allow_origin(match &self.origins {
                Some(list) => AllowOrigin::list(list.clone()),
                None => AllowOrigin::any(),
            })
            .allow_methods(match &self.methods {
                Some(list) => AllowMethods::list(list.clone()),
                None => AllowMethods::any(),
            })
            .allow_headers(match &self.headers {
                Some(list) => AllowHeaders::list(list.clone()),
                None => AllowHeaders::any(),
            })
    }
}

/// Every item of every value: comma lists or JSON string lists, trimmed, empty ones dropped.
fn items(values: &[String], flag: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for value in values {
        let value = value.trim();
        if value.starts_with('[') {
            let list: Vec<String> = serde_json::from_str(value)
                .map_err(|e| format!("{flag}: {value:?} is not a JSON list of strings: {e}"))?;
            out.extend(list);
        } else {
            out.extend(value.split(',').map(str::to_string));
        }
    }
    Ok(out
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// `None` when `*` is among the items, else each item parsed.
fn wildcard_or<T>(
    items: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, String> {
    if items.iter().any(|i| i == "*") {
        return Ok(None);
    }
    items
        .iter()
        .map(|i| parse(i))
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn off_without_origins_and_lists_in_every_form() {
        assert_eq!(CorsConfig::parse(&[], &[], &[]), Ok(None));
        assert!(CorsConfig::parse(&[], &s(&["GET"]), &[]).is_err());
        let c = CorsConfig::parse(
            &s(&[
                "https://a.example, https://b.example:8443",
                r#"["http://c"]"#,
            ]),
            &s(&["get,post"]),
            &s(&["authorization,content-type"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.origins.as_ref().unwrap().len(), 3);
        assert_eq!(c.methods, Some(vec![Method::GET, Method::POST]));
        assert_eq!(c.headers.as_ref().unwrap().len(), 2);
        let any = CorsConfig::parse(&s(&["*"]), &s(&["*"]), &[])
            .unwrap()
            .unwrap();
        assert_eq!((any.origins, any.methods, any.headers), (None, None, None));
    }

    #[test]
    fn bad_values_are_named() {
        let e = CorsConfig::parse(&s(&["not an origin"]), &[], &[]).unwrap_err();
        assert!(e.contains("--allowed-origins"), "{e}");
        let e = CorsConfig::parse(&s(&["http://a"]), &s(&["GE T"]), &[]).unwrap_err();
        assert!(e.contains("--allowed-methods"), "{e}");
        let e = CorsConfig::parse(&s(&["http://a"]), &[], &s(&["bad header"])).unwrap_err();
        assert!(e.contains("--allowed-headers"), "{e}");
        let e = CorsConfig::parse(&s(&["[1, 2]"]), &[], &[]).unwrap_err();
        assert!(e.contains("JSON"), "{e}");
    }
}
