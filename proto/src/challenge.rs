//! `WWW-Authenticate` parsing (RFC 9110 §11.6.1, RFC 6750 §3).
//!
//! ```text
//! WWW-Authenticate = #challenge
//! challenge  = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param = token BWS "=" BWS ( token / quoted-string )
//! ```
//!
//! Several challenges may share one header value, separated by commas just
//! like the parameters, so a comma followed by `token` *without* `=` starts
//! the next challenge. Parameter names are case-insensitive; unknown ones
//! are kept; malformed input yields what could be parsed up to that point,
//! never a panic. Input is bounded (servers are not trusted).
//!
//! One tolerance: an unquoted value is read up to the next comma or
//! whitespace, not only its token characters, so a URL sent without
//! quotes (Stripe: `resource_metadata=https://mcp.stripe.com/...`) is
//! read whole rather than cut at its `:`.

/// Longest header value considered; the rest is ignored.
const MAX_LEN: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lowercased (`bearer`).
    pub scheme: String,
    pub token68: Option<String>,
    /// Parameters in order; names lowercased.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a Bearer challenge tells an OAuth client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BearerChallenge {
    pub resource_metadata: Option<String>,
    /// Space-separated scopes the resource asks for.
    pub scope: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl BearerChallenge {
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token68_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> &str {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or("")
    }
    fn quoted(&mut self) -> Option<String> {
        // At the opening quote.
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
    /// An unquoted parameter value: up to the next comma or whitespace.
    fn bare_value(&mut self) -> String {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| !matches!(c, b',' | b' ' | b'\t' | b'"'))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    /// Skips to just past the next comma (error recovery).
    fn skip_past_comma(&mut self) {
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == b',' {
                break;
            }
        }
    }
}

/// Parses one or more `WWW-Authenticate` header values.
pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut budget = MAX_LEN;
    for value in values {
        let value = &value[..floor_char_boundary(value, budget)];
        budget = budget.saturating_sub(value.len());
        parse_one(value, &mut out);
        if budget == 0 {
            break;
        }
    }
    out
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

fn parse_one(value: &str, out: &mut Vec<Challenge>) {
    let mut c = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    loop {
        c.skip_ws_and_commas();
        if c.peek().is_none() {
            return;
        }
        let scheme = c.token().to_ascii_lowercase();
        if scheme.is_empty() {
            c.skip_past_comma();
            continue;
        }
        let mut challenge = Challenge {
            scheme,
            token68: None,
            params: Vec::new(),
        };
        c.skip_ws();
        // token68: its characters, then '='s, then end or a comma.
        let start = c.i;
        while c.peek().is_some_and(is_token68_char) {
            c.i += 1;
        }
        let body_end = c.i;
        while c.peek() == Some(b'=') {
            c.i += 1;
        }
        let had_padding = c.i > body_end;
        let mut after = Cursor { s: c.s, i: c.i };
        after.skip_ws();
        let at_end = matches!(after.peek(), None | Some(b','));
        if body_end > start && at_end && (had_padding || !value[start..body_end].contains('=')) {
            // Either `abc==` or a bare `abc` that is not followed by '='.
            if had_padding || c.i == body_end {
                challenge.token68 = Some(value[start..c.i].to_string());
                c.i = after.i;
                out.push(challenge);
                continue;
            }
        }
        c.i = start;
        // auth-params until the next challenge.
        loop {
            c.skip_ws();
            let before = c.i;
            let name = c.token().to_ascii_lowercase();
            if name.is_empty() {
                if c.peek() == Some(b',') {
                    c.i += 1;
                    continue;
                }
                if c.peek().is_some() {
                    c.skip_past_comma();
                    continue;
                }
                break;
            }
            c.skip_ws();
            if c.peek() != Some(b'=') {
                // A token without '=': the next challenge's scheme.
                c.i = before;
                break;
            }
            c.i += 1;
            c.skip_ws();
            let value = if c.peek() == Some(b'"') {
                match c.quoted() {
                    Some(v) => v,
                    None => {
                        // Unterminated quote: the header ends here.
                        break;
                    }
                }
            } else {
                c.bare_value()
            };
            challenge.params.push((name, value));
            c.skip_ws();
            match c.peek() {
                Some(b',') => {
                    c.i += 1;
                }
                None => break,
                Some(_) => c.skip_past_comma(),
            }
        }
        out.push(challenge);
    }
}

/// The first Bearer challenge's OAuth parameters, if any.
pub fn bearer<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<BearerChallenge> {
    let challenges = parse(values);
    let bearer = challenges.iter().find(|c| c.scheme == "bearer")?;
    let get = |name: &str| bearer.param(name).map(str::to_string);
    Some(BearerChallenge {
        resource_metadata: get("resource_metadata"),
        scope: get("scope"),
        error: get("error"),
        error_description: get("error_description"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &str) -> Vec<Challenge> {
        parse([v])
    }

    #[test]
    fn bearer_with_resource_metadata_and_scope() {
        let b = bearer([
            r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", scope="files:read files:write""#,
        ])
        .unwrap();
        assert_eq!(
            b.resource_metadata.as_deref(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(b.scopes(), ["files:read", "files:write"]);
        assert_eq!(b.error, None);
    }

    #[test]
    fn several_challenges_in_one_value() {
        let c =
            one(r#"Basic realm="x, y", Bearer error="insufficient_scope", scope="a b", Newauth"#);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("x, y"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(c[1].param("scope"), Some("a b"));
        assert_eq!(c[2].scheme, "newauth");
    }

    #[test]
    fn several_header_values() {
        let b = bearer([
            "Basic realm=\"r\"",
            "Bearer realm=\"api\", error=invalid_token",
        ])
        .unwrap();
        assert_eq!(b.error.as_deref(), Some("invalid_token"));
    }

    #[test]
    fn escapes_case_and_whitespace() {
        let c = one("BEARER   Realm = \"a \\\"quoted\\\" \\\\ value\" ,SCOPE=read");
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some(r#"a "quoted" \ value"#));
        assert_eq!(c[0].param("scope"), Some("read"));
    }

    #[test]
    fn token68_and_bare_schemes() {
        let c = one("Negotiate abc123==, Bearer");
        assert_eq!(c[0].token68.as_deref(), Some("abc123=="));
        assert_eq!(c[1].scheme, "bearer");
        assert!(c[1].params.is_empty());
        assert!(bearer(["Bearer"]).is_some());
    }

    #[test]
    fn unknown_params_are_kept_and_garbage_is_survived() {
        let c = one(r#"Bearer foo="bar", x-custom=1, resource_metadata="https://a/b""#);
        assert_eq!(c[0].param("foo"), Some("bar"));
        assert_eq!(c[0].param("x-custom"), Some("1"));
        assert_eq!(c[0].param("resource_metadata"), Some("https://a/b"));
        for garbage in [
            "",
            ",,,",
            "=",
            "Bearer =",
            "Bearer a=\"unterminated",
            "\"",
            "Bearer a=b c=d",
            "😀",
            "Bearer a==b",
            "Bearer ,,, a=\"b\",,",
        ] {
            let _ = parse([garbage]);
        }
        assert_eq!(one("Bearer ,,, a=\"b\",,")[0].param("a"), Some("b"));
        assert!(bearer(["Basic realm=x"]).is_none());
    }

    #[test]
    fn an_unquoted_url_is_read_whole() {
        // Stripe.
        let b = bearer([
            "Bearer resource_metadata=https://mcp.stripe.com/.well-known/oauth-protected-resource, error=invalid_token",
        ])
        .unwrap();
        assert_eq!(
            b.resource_metadata.as_deref(),
            Some("https://mcp.stripe.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(b.error.as_deref(), Some("invalid_token"));
        let b = bearer(["Bearer realm=mcp resource_metadata=https://a.example/x"]).unwrap();
        assert_eq!(b.resource_metadata, None, "no comma: not this parameter");
        let c = one("Bearer resource_metadata=https://a.example/prm, Basic realm=\"r\"");
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            c[0].param("resource_metadata"),
            Some("https://a.example/prm")
        );
    }

    #[test]
    fn huge_input_is_bounded() {
        let big = format!("Bearer a=\"{}\"", "x".repeat(100_000));
        let c = parse([big.as_str()]);
        // Unterminated within the bound: parsed as far as possible, no panic.
        assert!(c.len() <= 1);
    }
}
