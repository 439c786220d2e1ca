//! Which URLs the broker will talk to.
//!
//! Everything is https, except http to a loopback host (127.0.0.0/8, ::1,
//! `localhost`), which local development servers need. URLs never carry
//! userinfo (credentials would leak into logs and across origins) nor a
//! fragment (meaningless to a server, and forbidden for OAuth endpoints).

use std::net::IpAddr;
use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a valid URL ({0})")]
    Parse(String),
    #[error("scheme {0:?} is not allowed: use https (or http for a loopback host)")]
    Scheme(String),
    #[error("http is only allowed for loopback hosts (127.0.0.1, ::1, localhost): use https")]
    InsecureHttp,
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL must not contain a user name or password")]
    Userinfo,
    #[error("the URL must not contain a fragment (#...)")]
    Fragment,
}

/// True for 127.0.0.0/8, ::1 and `localhost` (and its subdomains, which
/// resolvers map to loopback by RFC 6761).
pub fn is_loopback_host(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Ok(ip) = name.parse::<IpAddr>() {
                return ip.is_loopback();
            }
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// Parses and checks a URL the broker is asked to contact.
pub fn parse_secure_url(input: &str) -> Result<Url, UrlError> {
    let url = Url::parse(input.trim()).map_err(|e| UrlError::Parse(e.to_string()))?;
    check_secure_url(&url)?;
    Ok(url)
}

/// Checks an already parsed URL against the policy above.
pub fn check_secure_url(url: &Url) -> Result<(), UrlError> {
    let host = url.host().ok_or(UrlError::NoHost)?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => return Err(UrlError::InsecureHttp),
        other => return Err(UrlError::Scheme(other.to_string())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Userinfo);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        for ok in [
            "https://mcp.linear.app/mcp",
            "https://example.com",
            "http://127.0.0.1:8080/mcp",
            "http://127.9.9.9/",
            "http://[::1]:3000/mcp",
            "http://localhost:3000/",
            "http://LOCALHOST/",
            "http://api.localhost/",
        ] {
            assert!(parse_secure_url(ok).is_ok(), "{ok} should be accepted");
        }
        assert_eq!(
            parse_secure_url("http://example.com/mcp"),
            Err(UrlError::InsecureHttp)
        );
        assert_eq!(
            parse_secure_url("http://10.0.0.1/mcp"),
            Err(UrlError::InsecureHttp)
        );
        assert_eq!(
            parse_secure_url("http://localhost.evil.com/"),
            Err(UrlError::InsecureHttp)
        );
        assert!(matches!(
            parse_secure_url("ftp://example.com"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            parse_secure_url("file:///etc/passwd"),
            Err(UrlError::NoHost | UrlError::Scheme(_))
        ));
    }

    #[test]
    fn userinfo_and_fragments_are_refused() {
        assert_eq!(
            parse_secure_url("https://user@example.com/"),
            Err(UrlError::Userinfo)
        );
        assert_eq!(
            parse_secure_url("https://user:pw@example.com/"),
            Err(UrlError::Userinfo)
        );
        assert_eq!(
            parse_secure_url("https://example.com/mcp#x"),
            Err(UrlError::Fragment)
        );
        assert_eq!(
            parse_secure_url("https://example.com/mcp#"),
            Err(UrlError::Fragment)
        );
        assert!(matches!(
            parse_secure_url("not a url"),
            Err(UrlError::Parse(_))
        ));
    }
}
