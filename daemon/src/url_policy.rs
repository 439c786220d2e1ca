//! Which URLs the broker will talk to.
//!
//! Everything is https, except http to a loopback host (127.0.0.0/8, ::1,
//! `localhost`), which local development servers need. URLs never carry
//! userinfo (credentials would leak into logs and across origins) nor a
//! fragment (meaningless to a server, and forbidden for OAuth endpoints).
//!
//! Private addresses: a local broker legitimately talks to internal
//! servers (an MCP server or Keycloak on the company network), and a DNS
//! name can resolve to a private address anyway, so private ranges are not
//! refused. One pivot is: a server elsewhere may not send the broker to
//! this machine. Every URL discovered for a server that is not itself on
//! this machine (PRM, metadata, endpoints, redirects) must not point at
//! loopback, the unspecified address (which connects to loopback) or
//! `localhost`; see [`check_discovered_url`].

use std::net::IpAddr;
use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a valid URL ({0})")]
    Parse(String),
    /// `example.com/mcp`: what to type instead.
    #[error("it needs a scheme; {0}")]
    NoScheme(String),
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
    #[error(
        "it points at this machine, but the MCP server is elsewhere; only a server on this machine may use a local authorization server"
    )]
    LocalFromRemote,
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

/// True for hosts that reach this machine: loopback, the unspecified
/// address (0.0.0.0 and :: connect to loopback), their IPv4-mapped IPv6
/// forms, and `localhost` names.
pub fn is_this_machine(host: &Host<&str>) -> bool {
    let ip_is_local = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
    };
    match host {
        Host::Ipv4(ip) => ip_is_local(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => ip_is_local(IpAddr::V6(*ip)),
        Host::Domain(_) => is_loopback_host(host),
    }
}

/// Checks a URL discovered while serving `server` (from a document or a
/// redirect): the general policy, and no pivot from a server elsewhere to
/// this machine.
pub fn check_discovered_url(url: &Url, server: &Url) -> Result<(), UrlError> {
    check_secure_url(url)?;
    let local = |u: &Url| u.host().is_some_and(|h| is_this_machine(&h));
    if local(url) && !local(server) {
        return Err(UrlError::LocalFromRemote);
    }
    Ok(())
}

/// Parses and checks a URL the broker is asked to contact. A URL typed
/// without its scheme (`example.com/mcp`, `localhost:8080/mcp`) is refused
/// with the URL to use instead.
pub fn parse_secure_url(input: &str) -> Result<Url, UrlError> {
    let input = input.trim();
    let url = match Url::parse(input) {
        Ok(url) => url,
        Err(e) => {
            let advice = match e {
                url::ParseError::RelativeUrlWithoutBase => scheme_advice(input, false),
                _ => None,
            };
            return Err(advice.map_or_else(|| UrlError::Parse(e.to_string()), UrlError::NoScheme));
        }
    };
    match check_secure_url(&url) {
        // `localhost:8080/mcp` parses with "localhost" as its scheme.
        Err(UrlError::NoHost) if !input.contains("://") => Err(scheme_advice(input, true)
            .map(UrlError::NoScheme)
            .unwrap_or(UrlError::NoHost)),
        Err(e) => Err(e),
        Ok(()) => Ok(url),
    }
}

/// "use https://INPUT" when that is a URL the policy accepts; with
/// `hostlike`, only when the host looks like one (a dot, an address or
/// `localhost`), so `file:/etc/passwd` is not read as host "file".
fn scheme_advice(input: &str, hostlike: bool) -> Option<String> {
    let https = Url::parse(&format!("https://{input}")).ok()?;
    check_secure_url(&https).ok()?;
    let host = https.host()?;
    let loopback = is_loopback_host(&host);
    if hostlike && matches!(host, Host::Domain(d) if !d.contains('.')) && !loopback {
        return None;
    }
    // Long input is not echoed back: the advice names the scheme.
    if input.len() > 200 {
        return Some("start it with https://".into());
    }
    Some(if loopback {
        format!("use http://{input} (or https://{input} if the server speaks TLS)")
    } else {
        format!("use https://{input}")
    })
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
    fn a_server_elsewhere_cannot_send_the_broker_to_this_machine() {
        let remote = Url::parse("https://mcp.example.com/mcp").unwrap();
        let local = Url::parse("http://127.0.0.1:8080/mcp").unwrap();
        for pivot in [
            "http://127.0.0.1:9000/",
            "http://localhost:9000/",
            "http://api.localhost/",
            "http://[::1]:9000/",
            "https://0.0.0.0/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/",
            "https://127.1.2.3/token",
        ] {
            let url = Url::parse(pivot).unwrap();
            assert_eq!(
                check_discovered_url(&url, &remote),
                Err(UrlError::LocalFromRemote),
                "{pivot}"
            );
        }
        // A local server may use a local AS; anyone may use remote ones,
        // private ranges included.
        for ok in ["http://127.0.0.1:9000/", "http://localhost:1/x"] {
            let url = Url::parse(ok).unwrap();
            assert_eq!(check_discovered_url(&url, &local), Ok(()), "{ok}");
        }
        for ok in [
            "https://as.example.com/",
            "https://10.0.0.5/",
            "https://192.168.1.2/",
        ] {
            let url = Url::parse(ok).unwrap();
            assert_eq!(check_discovered_url(&url, &remote), Ok(()), "{ok}");
            assert_eq!(check_discovered_url(&url, &local), Ok(()), "{ok}");
        }
        // The https rule still applies to private ranges.
        let url = Url::parse("http://10.0.0.5/").unwrap();
        assert_eq!(
            check_discovered_url(&url, &remote),
            Err(UrlError::InsecureHttp)
        );
    }

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
    fn a_url_without_a_scheme_is_refused_with_the_url_to_use() {
        for (input, advice) in [
            ("example.com/mcp", "use https://example.com/mcp"),
            ("mcp.linear.app", "use https://mcp.linear.app"),
            ("example.com:8443/mcp", "use https://example.com:8443/mcp"),
            (
                "localhost:8080/mcp",
                "use http://localhost:8080/mcp (or https://localhost:8080/mcp if the server speaks TLS)",
            ),
            (
                "127.0.0.1:8080/mcp",
                "use http://127.0.0.1:8080/mcp (or https://127.0.0.1:8080/mcp if the server speaks TLS)",
            ),
            ("  example.com/mcp ", "use https://example.com/mcp"),
        ] {
            assert_eq!(
                parse_secure_url(input),
                Err(UrlError::NoScheme(advice.into())),
                "{input:?}"
            );
        }
        let message = parse_secure_url("example.com/mcp").unwrap_err().to_string();
        assert_eq!(message, "it needs a scheme; use https://example.com/mcp");
        // Long input is not echoed.
        let long = format!("example.com/{}", "a".repeat(300));
        assert_eq!(
            parse_secure_url(&long),
            Err(UrlError::NoScheme("start it with https://".into()))
        );
        // Not a host without a scheme: the usual errors.
        assert!(matches!(
            parse_secure_url("not a url"),
            Err(UrlError::Parse(_))
        ));
        assert!(matches!(
            parse_secure_url("file:/etc/passwd"),
            Err(UrlError::NoHost | UrlError::Scheme(_))
        ));
        assert!(matches!(
            parse_secure_url("mailto:me@example.com"),
            Err(UrlError::NoHost)
        ));
        assert!(matches!(
            parse_secure_url("ftp://example.com"),
            Err(UrlError::Scheme(_))
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
