//! The HTTP server: shared state, the routes of each part (the dashboard now,
//! Inngest's SDK protocol later), and what every response goes through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::db::Database;

pub struct AppState {
    pub db: Database,
    pub csrf: CsrfToken,
    /// Shown in the header of each page (no host, port or password).
    pub role: String,
    pub database: String,
}

pub type Shared = Arc<AppState>;

/// A random token per server process, put into every form and required by
/// every POST. Another origin cannot read the pages that carry it, and the
/// Host check below keeps a DNS-rebound name from reading them as this origin.
pub struct CsrfToken(String);

impl CsrfToken {
    pub fn random() -> std::io::Result<CsrfToken> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(CsrfToken(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    pub fn value(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison: the time taken says nothing of the prefix.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

pub fn router(state: Shared, listen: SocketAddr) -> Router {
    Router::new()
        .merge(crate::dashboard::routes())
        .with_state(state)
        .layer(middleware::from_fn(move |request, next| {
            check_host(listen, request, next)
        }))
        .layer(middleware::from_fn(headers))
}

/// Names under which a server on a loopback address may be reached. A page
/// served under any other name (DNS rebinding: an attacker's name resolving
/// to 127.0.0.1) is refused, so that such a page cannot read the CSRF token.
fn host_allowed(listen: SocketAddr, host: &str) -> bool {
    if !listen.ip().is_loopback() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn check_host(listen: SocketAddr, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(listen, host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers to localhost and loopback addresses only\n",
        )
            .into_response();
    }
    // A browser sends Origin with every cross-site POST: refuse those before
    // any handler runs, in addition to the CSRF token.
    if request.method() == Method::POST {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
            if !same {
                return (StatusCode::FORBIDDEN, "cross-origin POST refused\n").into_response();
            }
        }
    }
    next.run(request).await
}

/// Security headers on every response, and the server's own time
/// (`Server-Timing: app;dur=…`, in milliseconds) for bench/dashboard.
async fn headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &str); 5] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not no-referrer: with it, Chromium sends `Origin: null` on form posts.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={elapsed:.3}")) {
        headers.insert(HeaderName::from_static("server-timing"), value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_only() {
        let local: SocketAddr = "127.0.0.1:8288".parse().unwrap();
        for ok in [
            "localhost:8288",
            "LOCALHOST",
            "127.0.0.1:8288",
            "127.0.0.2",
            "[::1]:8288",
        ] {
            assert!(host_allowed(local, ok), "{ok}");
        }
        for refused in ["evil.example:8288", "127.0.0.1.evil.example", "", "[::2]:1"] {
            assert!(!host_allowed(local, refused), "{refused}");
        }
        let everywhere: SocketAddr = "0.0.0.0:8288".parse().unwrap();
        assert!(host_allowed(everywhere, "dashboard.internal:8288"));
    }

    #[test]
    fn csrf_tokens() {
        let token = CsrfToken::random().unwrap();
        assert_eq!(token.value().len(), 64);
        assert!(token.matches(token.value()));
        assert!(!token.matches(""));
        assert!(!token.matches(&token.value()[1..]));
        assert_ne!(token.value(), CsrfToken::random().unwrap().value());
    }
}
