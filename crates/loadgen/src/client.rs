//! The client, deliberately lean like wrk: one keep-alive HTTP/1.1 connection per worker,
//! pre-serialized requests written as they are, and only the status line and the body length
//! of each answer parsed. On a shared benchmark box every microsecond the client spends is
//! taken from the server under test. It speaks plain `http://` only.

use std::time::Duration;

/// One keep-alive HTTP/1.1 connection: write a pre-serialized request, read the status and as
/// many body bytes as the answer declares. Any failure drops the connection (the next request
/// reconnects) and counts as a transport error.
pub(crate) struct Conn {
    host: String,
    pub(crate) stream: Option<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(host: String) -> Self {
        Self {
            host,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    pub(crate) async fn exchange(&mut self, request: &[u8], timeout: Duration) -> Option<u16> {
        match tokio::time::timeout(timeout, self.try_exchange(request)).await {
            Ok(Ok((status, keep_alive))) => {
                if !keep_alive {
                    self.stream = None;
                }
                Some(status)
            }
            _ => {
                self.stream = None;
                None
            }
        }
    }

    async fn try_exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.stream.is_none() {
            let stream = tokio::net::TcpStream::connect(&self.host).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        stream.write_all(request).await?;
        self.buf.clear();
        loop {
            if let Some(done) = parse_response(&self.buf)? {
                return Ok(done);
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `Some((status, keep_alive))` once `buf` holds a whole response (Content-Length or chunked
/// body), `None` while more bytes are needed.
fn parse_response(buf: &[u8]) -> std::io::Result<Option<(u16, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = true;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body = &buf[head_len..];
    if chunked {
        return Ok(chunked_complete(body).then_some((status, keep_alive)));
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some((status, keep_alive))),
        Some(_) => Ok(None),
        // Neither: the body runs to the end of the connection; keep nothing of it.
        None => Ok(Some((status, false))),
    }
}

/// Whether a chunked body is complete (ends with the zero-size chunk).
fn chunked_complete(mut body: &[u8]) -> bool {
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return false };
        let chunk_end = line_end + 2 + size + 2;
        if size == 0 {
            return body.len() >= line_end + 4;
        }
        if body.len() < chunk_end {
            return false;
        }
        body = &body[chunk_end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_complete_only_with_their_whole_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsuccess";
        assert_eq!(parse_response(ok).unwrap(), Some((200, true)));
        assert_eq!(parse_response(&ok[..ok.len() - 2]).unwrap(), None);
        assert_eq!(parse_response(b"HTTP/1.1 503 Service").unwrap(), None);
        let close = b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_response(close).unwrap(), Some((503, false)));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nsuccess\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), Some((200, true)));
        assert_eq!(parse_response(&chunked[..chunked.len() - 3]).unwrap(), None);
        assert!(parse_response(b"NOT HTTP\r\n\r\n").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for junk in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"\r\n\r\n",
            b"HTTP/1.1 2",
        ] {
            let _ = parse_response(junk);
        }
        assert!(!chunked_complete(b"ffffffffffffffffffff\r\n"));
    }
}
