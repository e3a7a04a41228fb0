//! Small helpers for replica URLs, shared by the backends: `%XX` decoding, and redaction of the
//! secrets a URL may carry (a `user:password@`, a query token) before it is shown anywhere.

/// Decodes `%XX` escapes. The error says what is wrong with `s`.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape at byte {i} of {:?}", redact(s)))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{:?} is not UTF-8 once decoded", redact(s)))
}

/// `s` with any user information (`user:password@`) and any query or fragment replaced by
/// `<redacted>`: what may be shown of a URL in a message or a log line.
///
/// ```
/// use lifeboat_storage::url::redact;
/// assert_eq!(redact("https://k:s3cr3t@h:9000/p?token=x"), "https://<redacted>@h:9000/p?<redacted>");
/// assert_eq!(redact("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
/// ```
pub fn redact(s: &str) -> String {
    let (main, secret_tail) = match s.find(['?', '#']) {
        Some(i) => (&s[..i], Some(&s[i..i + 1])),
        None => (s, None),
    };
    let mut out = String::with_capacity(s.len());
    let (scheme, rest) = match main.find("://") {
        Some(i) => (&main[..i + 3], &main[i + 3..]),
        None => ("", main),
    };
    out.push_str(scheme);
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            out.push_str("<redacted>");
            out.push_str(&rest[at..]);
        }
        None => out.push_str(rest),
    }
    if let Some(sep) = secret_tail {
        out.push_str(sep);
        out.push_str("<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc").unwrap(), "a b/c");
        assert!(percent_decode("a%2").is_err());
        assert!(percent_decode("a%zz").is_err());
        assert!(percent_decode("%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn redacts_user_info_queries_and_fragments() {
        for (url, shown) in [
            ("https://a:b@h/p", "https://<redacted>@h/p"),
            ("https://tok@h", "https://<redacted>@h"),
            (
                "https://h/p?X-Amz-Security-Token=abc",
                "https://h/p?<redacted>",
            ),
            ("https://h/p#frag", "https://h/p#<redacted>"),
            ("https://h/a@b", "https://h/a@b"),
            ("h:9000", "h:9000"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let shown = redact("https://key:very-secret@h.example/x?sig=also-secret");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
