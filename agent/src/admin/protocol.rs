//! The admin socket's request line: read with bounds on its length and on the time it takes,
//! then parsed and checked. All of it is outside input: a clear refusal, never an unbounded
//! buffer or a task that waits forever.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::Request;

/// Longest request line accepted (a filter is a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Time a client has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses one request line (its newline removed) and checks its filter.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request line longer than {MAX_REQUEST_BYTES} bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_string())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let request: Request = serde_json::from_str(text).map_err(|error| {
        let shown: String = text.chars().take(200).collect();
        format!("bad request {shown:?}: {error} (want \"status\" or {{\"observe\":{{...filter...}}}})")
    })?;
    if let Request::Observe(filter) = &request {
        if let Some(verdict) = filter.verdict.as_deref().filter(|v| !matches!(*v, "deny" | "allow")) {
            return Err(format!("filter verdict {verdict:?}: want deny or allow"));
        }
        if let Some(pod) = filter.pod.as_deref().filter(|p| p.split_once('/').is_none_or(|(ns, name)| ns.is_empty() || name.is_empty())) {
            return Err(format!("filter pod {pod:?}: want namespace/name"));
        }
    }
    Ok(request)
}

/// Reads the request line: None when the client hung up first; an error when the line is too
/// long or takes longer than `REQUEST_TIMEOUT`.
pub async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<Request>, String> {
    read_request_within(reader, REQUEST_TIMEOUT).await
}

async fn read_request_within<R: AsyncBufRead + Unpin>(reader: &mut R, timeout: Duration) -> Result<Option<Request>, String> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(timeout, reader.take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line)).await;
    match read {
        Err(_) => Err(format!("no request line within {} s", timeout.as_secs_f64())),
        Ok(Err(error)) => Err(format!("reading the request: {error}")),
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            } else if line.len() > MAX_REQUEST_BYTES {
                return Err(format!("request line longer than {MAX_REQUEST_BYTES} bytes"));
            }
            parse_request(&line).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::filter::Filter;

    #[test]
    fn parses_and_checks_requests() {
        assert_eq!(parse_request(b"\"status\""), Ok(Request::Status));
        assert_eq!(parse_request(b"\"status\"\r"), Ok(Request::Status));
        let observe = parse_request(br#"{"observe":{"tenant":"a","verdict":"deny"}}"#);
        assert!(matches!(observe, Ok(Request::Observe(Filter { tenant: Some(_), .. }))), "{observe:?}");
        for (bad, says) in [
            (&b"status"[..], "bad request"),
            (br#"{"observe":{"verdict":"maybe"}}"#, "want deny or allow"),
            (br#"{"observe":{"pod":"web"}}"#, "want namespace/name"),
            (br#"{"observe":{"pod":"/web"}}"#, "want namespace/name"),
            (br#"{"observe":{"colour":"red"}}"#, "unknown field"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let error = parse_request(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse_request(&long).unwrap_err().contains("longer than"));
    }

    #[tokio::test]
    async fn reads_a_bounded_line() {
        let mut ok = &b"\"status\"\nmore"[..];
        assert_eq!(read_request(&mut ok).await, Ok(Some(Request::Status)));
        let mut empty = &b""[..];
        assert_eq!(read_request(&mut empty).await, Ok(None));
        let endless = vec![b'x'; MAX_REQUEST_BYTES * 4];
        let error = read_request(&mut &endless[..]).await.unwrap_err();
        assert!(error.contains("longer than"), "{error}");
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_line_times_out() {
        let (client, server) = tokio::io::duplex(64);
        let mut reader = tokio::io::BufReader::new(server);
        let error = read_request_within(&mut reader, Duration::from_millis(50)).await.unwrap_err();
        assert!(error.contains("no request line within"), "{error}");
        drop(client);
    }
}
