//! Where a request may go: the superuser setting `jobs.fetch_allowed_hosts`,
//! and which redirects are followed.
//!
//! The setting is a list of patterns separated by commas and/or white space:
//!
//! | pattern             | allows |
//! |---------------------|--------|
//! | `api.resend.com`    | that host on the scheme's default port (443 for https, 80 for http) |
//! | `api.resend.com:8443` | that host on port 8443 only (either scheme) |
//! | `localhost:*`       | that host on any port |
//! | `*.example.com`     | every subdomain at any depth (`a.example.com`, `a.b.example.com`), not `example.com` itself |
//! | `127.0.0.1:8080`, `[::1]:9000` | that IP address exactly: `127.0.0.1` does not allow `localhost` nor `[::ffff:127.0.0.1]` |
//! | `*` / `*:*`         | any host on default ports / on any port |
//!
//! Host names compare case-insensitively and after the same normalization as
//! URLs (IDNA to punycode, one trailing dot ignored; `127.1` is `127.0.0.1`).
//! A pattern names a host, not a URL: `https://x` is an error, and the scheme
//! only decides the default port. An empty setting allows nothing.
//!
//! The check is on the URL's host, before any DNS lookup: a name that is
//! allowed may resolve to any address. Requests go directly to the host,
//! never through a proxy from the server's environment.

use std::net::{Ipv4Addr, Ipv6Addr};

use http::Method;
use url::{Host, Url};

/// The setting's name, in every refusal.
pub const SETTING: &str = "jobs.fetch_allowed_hosts";
/// Redirects followed before the request fails.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Name(String),
    /// The parent domain: `example.com` for `*.example.com`.
    Subdomains(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Default,
    Exact(u16),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: HostPattern,
    port: PortPattern,
}

/// The parsed setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<Pattern>,
}

fn normalized_name(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

fn parse_pattern(entry: &str) -> Result<Pattern, String> {
    let bad = |why: &str| format!("{SETTING} entry \"{entry}\" {why}");
    if entry.contains("://") || entry.contains('/') {
        return Err(bad(
            "is not a host pattern: write a host with an optional port, such as api.example.com or api.example.com:8443",
        ));
    }
    let (host, port) = if let Some(inner) = entry.strip_prefix('[') {
        let Some((address, rest)) = inner.split_once(']') else {
            return Err(bad("has no closing ']'"));
        };
        let port = match rest {
            "" => None,
            _ => Some(
                rest.strip_prefix(':')
                    .ok_or_else(|| bad("has text after ']' that is not :PORT"))?,
            ),
        };
        let address: Ipv6Addr = address
            .parse()
            .map_err(|_| bad("does not hold an IPv6 address in its brackets"))?;
        (HostPattern::Ipv6(address), port)
    } else {
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(bad(
                    "looks like an IPv6 address: write it in brackets, such as [::1]:9000",
                ))
            }
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(parent) = host.strip_prefix("*.") {
            match Host::parse(parent) {
                Ok(Host::Domain(domain)) if !parent.contains('*') => {
                    HostPattern::Subdomains(normalized_name(&domain).to_owned())
                }
                _ => return Err(bad("must have a domain name after \"*.\"")),
            }
        } else if host.contains('*') {
            return Err(bad(
                "has a '*' that is not a whole first label: write *.example.com",
            ));
        } else {
            match Host::parse(host) {
                Ok(Host::Domain(domain)) => HostPattern::Name(normalized_name(&domain).to_owned()),
                Ok(Host::Ipv4(address)) => HostPattern::Ipv4(address),
                Ok(Host::Ipv6(address)) => HostPattern::Ipv6(address),
                Err(e) => return Err(bad(&format!("is not a valid host name: {e}"))),
            }
        };
        (host, port)
    };
    let port = match port {
        None => PortPattern::Default,
        Some("*") => PortPattern::Any,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                PortPattern::Exact(port)
            }
            _ => {
                return Err(bad(
                    "has a port that is not a number from 1 to 65535 or '*'",
                ))
            }
        },
    };
    Ok(Pattern { host, port })
}

impl AllowedHosts {
    /// Parses the setting; an error names the entry.
    pub fn parse(setting: &str) -> Result<AllowedHosts, String> {
        let patterns = setting
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(parse_pattern)
            .collect::<Result<_, _>>()?;
        Ok(AllowedHosts { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn allows(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return false;
        };
        let default_port = match url.scheme() {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        self.patterns.iter().any(|pattern| {
            let port_ok = match pattern.port {
                PortPattern::Default => port == default_port,
                PortPattern::Exact(allowed) => port == allowed,
                PortPattern::Any => true,
            };
            port_ok
                && match (&pattern.host, &host) {
                    (HostPattern::Any, _) => true,
                    (HostPattern::Name(name), Host::Domain(domain)) => {
                        normalized_name(domain) == name
                    }
                    (HostPattern::Subdomains(parent), Host::Domain(domain)) => {
                        normalized_name(domain)
                            .strip_suffix(parent.as_str())
                            .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
                    }
                    (HostPattern::Ipv4(allowed), Host::Ipv4(address)) => allowed == address,
                    (HostPattern::Ipv6(allowed), Host::Ipv6(address)) => allowed == address,
                    _ => false,
                }
        })
    }

    /// `Err` is the refusal, naming the setting and `host:port`.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        if self.allows(url) {
            return Ok(());
        }
        let target = host_port(url);
        Err(if self.is_empty() {
            format!("{SETTING} is empty, so no host is allowed; a superuser must add {target}")
        } else {
            format!("{SETTING} does not allow {target}; a superuser must add it")
        })
    }
}

/// `api.example.com:443`, `[::1]:9000`.
pub(crate) fn host_port(url: &Url) -> String {
    let host = match url.host() {
        Some(Host::Ipv6(address)) => format!("[{address}]"),
        Some(host) => host.to_string(),
        None => String::new(),
    };
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The next request after a redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub url: Url,
    pub method: Method,
    /// False when the redirect turns the request into a GET.
    pub keep_body: bool,
    /// False when scheme, host or port change: credentials are not sent on.
    pub same_origin: bool,
}

pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect status leads (the allowed hosts are checked by the caller
/// like for any request). 303 turns any method but HEAD into GET without a
/// body, and so do 301 and 302 after a POST, as browsers and curl do; 307 and
/// 308 repeat the request as it was.
pub(crate) fn follow(
    status: u16,
    method: &Method,
    location: Option<&str>,
    current: &Url,
) -> Result<Redirect, String> {
    let Some(location) = location else {
        return Err(format!(
            "answered {status} without a usable Location header"
        ));
    };
    let url = current.join(location).map_err(|e| {
        format!("answered {status} with a Location that is not a URL ({e}): {location}")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "answered {status} redirecting to a {} URL; only http and https are followed",
            url.scheme()
        ));
    }
    let to_get = match status {
        303 => *method != Method::HEAD,
        301 | 302 => *method == Method::POST,
        _ => false,
    };
    Ok(Redirect {
        same_origin: url.origin() == current.origin(),
        method: if to_get { Method::GET } else { method.clone() },
        keep_body: !to_get,
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn allowed(setting: &str, target: &str) -> bool {
        AllowedHosts::parse(setting).unwrap().allows(&url(target))
    }

    #[test]
    fn a_host_without_port_allows_only_the_default_port_of_each_scheme() {
        let setting = "api.resend.com";
        assert!(allowed(setting, "https://api.resend.com/emails"));
        assert!(allowed(setting, "http://api.resend.com/"));
        assert!(allowed(setting, "https://API.Resend.COM:443/"));
        assert!(allowed(setting, "https://api.resend.com./"));
        assert!(!allowed(setting, "https://api.resend.com:8443/"));
        assert!(!allowed(setting, "http://api.resend.com:443/"));
        assert!(!allowed(setting, "https://resend.com/"));
        assert!(!allowed(setting, "https://x.api.resend.com/"));
        assert!(!allowed(setting, "https://api.resend.com.evil.net/"));
    }

    #[test]
    fn ports_exact_or_any() {
        assert!(allowed("127.0.0.1:8080", "http://127.0.0.1:8080/x"));
        assert!(allowed("127.0.0.1:8080", "https://127.0.0.1:8080/x"));
        assert!(!allowed("127.0.0.1:8080", "http://127.0.0.1:8081/x"));
        assert!(!allowed("127.0.0.1:8080", "http://127.0.0.1/x"));
        assert!(allowed("localhost:*", "http://localhost:1/"));
        assert!(allowed("localhost:*", "https://LOCALHOST:65535/"));
        assert!(!allowed("localhost:*", "http://127.0.0.1:1/"));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let setting = "*.example.com";
        assert!(allowed(setting, "https://a.example.com/"));
        assert!(allowed(setting, "https://a.b.example.com/"));
        assert!(!allowed(setting, "https://example.com/"));
        assert!(!allowed(setting, "https://badexample.com/"));
        assert!(!allowed(setting, "https://a.example.com:444/"));
        assert!(allowed(
            "*.example.com, example.com",
            "https://example.com/"
        ));
        assert!(allowed("*", "https://anything.at.all/"));
        assert!(allowed("*", "http://10.0.0.1/"));
        assert!(!allowed("*", "http://anything:8080/"));
        assert!(allowed("*:*", "http://anything:8080/"));
    }

    #[test]
    fn ip_literals_compare_exactly() {
        assert!(allowed("[::1]:9000", "http://[::1]:9000/"));
        assert!(allowed("[::1]:9000", "http://[0:0::1]:9000/"));
        assert!(!allowed("[::1]:9000", "http://localhost:9000/"));
        assert!(!allowed("[::1]:9000", "http://127.0.0.1:9000/"));
        assert!(allowed("127.0.0.1", "http://127.1/"));
        assert!(!allowed("127.0.0.1", "http://[::ffff:127.0.0.1]/"));
        assert!(!allowed("127.0.0.1", "http://localhost/"));
        assert!(allowed("[::1]", "https://[::1]/"));
    }

    #[test]
    fn separators_are_commas_and_white_space() {
        let hosts = AllowedHosts::parse(" a.com,b.com\n c.com:81 ,, ").unwrap();
        assert!(hosts.allows(&url("https://a.com/")));
        assert!(hosts.allows(&url("https://b.com/")));
        assert!(hosts.allows(&url("http://c.com:81/")));
        assert!(!hosts.allows(&url("https://d.com/")));
    }

    #[test]
    fn bad_patterns_are_errors_naming_the_entry() {
        for (setting, expected) in [
            (
                "https://a.com",
                "entry \"https://a.com\" is not a host pattern",
            ),
            ("a.com/x", "entry \"a.com/x\" is not a host pattern"),
            ("a.com:0", "entry \"a.com:0\" has a port that is not"),
            ("a.com:70000", "has a port that is not"),
            ("a.com:+80", "has a port that is not"),
            ("a.com:", "has a port that is not"),
            ("::1", "entry \"::1\" looks like an IPv6 address"),
            ("[::1", "has no closing ']'"),
            ("[::1]x", "has text after ']'"),
            ("[nope]:1", "does not hold an IPv6 address"),
            ("a.*.com", "has a '*' that is not a whole first label"),
            ("*.*.com", "must have a domain name after"),
            ("*.10.0.0.1", "must have a domain name after"),
            ("a b%.com", "entry \"b%.com\" is not a valid host name"),
        ] {
            let message = AllowedHosts::parse(setting).unwrap_err();
            assert!(
                message.starts_with(&format!("{SETTING} entry")) && message.contains(expected),
                "{setting}: {message}"
            );
        }
    }

    #[test]
    fn refusals_name_the_setting_and_host_port() {
        let empty = AllowedHosts::parse("").unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            empty.check(&url("https://api.example.com/x")).unwrap_err(),
            "jobs.fetch_allowed_hosts is empty, so no host is allowed; a superuser must add api.example.com:443"
        );
        let some = AllowedHosts::parse("a.com").unwrap();
        assert_eq!(
            some.check(&url("http://[::1]:9000/")).unwrap_err(),
            "jobs.fetch_allowed_hosts does not allow [::1]:9000; a superuser must add it"
        );
        assert_eq!(some.check(&url("https://a.com/")), Ok(()));
    }

    #[test]
    fn redirect_methods_follow_the_usual_rules() {
        let here = url("https://a.com/start");
        let hop = |status, method: Method| follow(status, &method, Some("/next"), &here).unwrap();
        for status in [301, 302] {
            assert_eq!(hop(status, Method::POST).method, Method::GET);
            assert!(!hop(status, Method::POST).keep_body);
            assert_eq!(hop(status, Method::PUT).method, Method::PUT);
            assert!(hop(status, Method::PUT).keep_body);
        }
        assert_eq!(hop(303, Method::PUT).method, Method::GET);
        assert!(!hop(303, Method::DELETE).keep_body);
        assert_eq!(hop(303, Method::HEAD).method, Method::HEAD);
        for status in [307, 308] {
            assert_eq!(hop(status, Method::POST).method, Method::POST);
            assert!(hop(status, Method::POST).keep_body);
        }
        assert_eq!(hop(302, Method::GET).url, url("https://a.com/next"));
        assert!(hop(302, Method::GET).same_origin);
    }

    #[test]
    fn redirect_targets_resolve_and_origin_changes_are_seen() {
        let here = url("https://a.com/dir/start");
        let to = |location| follow(302, &Method::GET, Some(location), &here);
        assert_eq!(to("next").unwrap().url, url("https://a.com/dir/next"));
        assert!(!to("https://b.com/").unwrap().same_origin);
        assert!(!to("http://a.com/dir/start").unwrap().same_origin);
        assert!(!to("https://a.com:8443/").unwrap().same_origin);
        assert!(to("//a.com/x").unwrap().same_origin);
        assert!(to("ftp://a.com/")
            .unwrap_err()
            .contains("redirecting to a ftp URL"));
        assert!(to("http://[bad/").unwrap_err().contains("not a URL"));
        assert_eq!(
            follow(301, &Method::GET, None, &here).unwrap_err(),
            "answered 301 without a usable Location header"
        );
        assert!(is_redirect(308) && !is_redirect(304) && !is_redirect(300));
    }
}
