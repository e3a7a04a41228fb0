//! Just enough HTTP/1.1 framing to relay one message at a time: a head (start line and
//! headers) and a body delimited by `Content-Length`, chunked transfer coding, or the end of
//! the connection. Bodies are relayed as they are on the wire, never re-encoded.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// How a message's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (a response without a length).
    UntilClose,
}

/// A message head as received, with what the relay needs to know about it.
#[derive(Clone, Debug)]
pub struct Head {
    /// The start line and headers, exactly as received (ending with the blank line).
    pub raw: Vec<u8>,
    /// The request method, or the response status as text.
    pub first: String,
    /// The response status code (0 for a request).
    pub status: u16,
    /// How its body is delimited.
    pub body: Body,
    /// Whether the client asked for `100-continue`.
    pub expects_continue: bool,
    /// Whether the sender will close the connection after this message (`Connection: close`).
    pub close: bool,
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads a head; `None` at a clean end of the stream before any byte.
pub async fn read_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
    request: bool,
    request_method: &str,
) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "head cut short",
            ));
        }
        raw.extend_from_slice(&line);
        if raw.len() > 64 << 10 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text.is_empty() {
            if lines.is_empty() {
                // A stray blank line between messages.
                raw.clear();
                continue;
            }
            break;
        }
        lines.push(text);
    }
    let start = &lines[0];
    let mut words = start.split_whitespace();
    let (first, status) = if request {
        (words.next().unwrap_or("").to_string(), 0)
    } else {
        let _version = words.next();
        let code = words.next().unwrap_or("");
        (code.to_string(), code.parse().unwrap_or(0))
    };
    let headers = &lines[1..];
    let chunked = header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    let body = if !request
        && (request_method == "HEAD" || status / 100 == 1 || status == 204 || status == 304)
    {
        Body::None
    } else if chunked {
        Body::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Body::None
        } else {
            Body::Length(n)
        }
    } else if request {
        Body::None
    } else {
        Body::UntilClose
    };
    let expects_continue = request
        && header(headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let close = header(headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(Some(Head {
        raw,
        first,
        status,
        body,
        expects_continue,
        close,
    }))
}

/// Reads a body as it is on the wire (chunk framing included).
pub async fn read_body<R: AsyncBufRead + Unpin>(r: &mut R, body: Body) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match body {
        Body::None => {}
        Body::Length(n) => {
            let mut take = r.take(n);
            take.read_to_end(&mut out).await?;
            if (out.len() as u64) < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body cut short",
                ));
            }
        }
        Body::UntilClose => {
            r.read_to_end(&mut out).await?;
        }
        Body::Chunked => loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunk cut short",
                ));
            }
            out.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size.trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut t = Vec::new();
                    if r.read_until(b'\n', &mut t).await? == 0 {
                        return Ok(out);
                    }
                    out.extend_from_slice(&t);
                    if t == b"\r\n" || t == b"\n" {
                        return Ok(out);
                    }
                }
            }
            let mut take = r.take(size + 2);
            let before = out.len();
            take.read_to_end(&mut out).await?;
            if ((out.len() - before) as u64) < size + 2 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunk cut short",
                ));
            }
        },
    }
    Ok(out)
}

/// The head without an `Expect: 100-continue` header (the proxy answers it itself).
pub fn without_expect(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let is_expect = line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("expect"));
        if !is_expect {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// A complete S3-style error response.
pub fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_requests_and_responses_with_each_kind_of_body() {
        let wire = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabcGET /b/k HTTP/1.1\r\n\r\n";
        let mut r = tokio::io::BufReader::new(&wire[..]);
        let h = read_head(&mut r, true, "").await.unwrap().unwrap();
        assert_eq!(h.first, "PUT");
        assert_eq!(h.body, Body::Length(3));
        assert!(h.expects_continue);
        assert!(!String::from_utf8_lossy(&without_expect(&h.raw)).contains("Expect"));
        assert_eq!(read_body(&mut r, h.body).await.unwrap(), b"abc");
        let h = read_head(&mut r, true, "").await.unwrap().unwrap();
        assert_eq!((h.first.as_str(), h.body), ("GET", Body::None));
        assert!(read_head(&mut r, true, "").await.unwrap().is_none());

        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut r = tokio::io::BufReader::new(&wire[..]);
        let h = read_head(&mut r, false, "GET").await.unwrap().unwrap();
        assert_eq!((h.status, h.body), (200, Body::Chunked));
        assert_eq!(
            read_body(&mut r, h.body).await.unwrap(),
            b"3\r\nabc\r\n0\r\n\r\n"
        );
        // A HEAD answer has a length but no body.
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let mut r = tokio::io::BufReader::new(&wire[..]);
        let h = read_head(&mut r, false, "HEAD").await.unwrap().unwrap();
        assert_eq!(h.body, Body::None);
    }
}
