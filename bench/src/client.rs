//! A minimal HTTP/1.1 keep-alive client over a raw tokio `TcpStream`: one request at a time per connection, the
//! request given as ready bytes, the response parsed with `httparse`. It does exactly what a load generator needs
//! (status code, body skipped, reconnect after an error or `Connection: close`) and nothing more, so it costs far
//! less CPU than a general client on a 2-core machine shared with the server under test.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to `addr`, opened on first use and reopened after an error.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, stream: None, buf: Vec::with_capacity(4096) }
    }

    /// Sends one complete request and returns the response's status code. On any error the connection is dropped
    /// (the next call reconnects).
    pub async fn send(&mut self, request: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        match self.exchange(request).await {
            Ok((status, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(status)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(request).await?;
        self.buf.clear();
        let (head_len, status, body, close) = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            read_more(stream, &mut self.buf).await?;
        };
        match body {
            Body::Length(n) => {
                while self.buf.len() < head_len + n {
                    read_more(stream, &mut self.buf).await?;
                }
            }
            Body::Chunked => {
                let mut pos = head_len;
                loop {
                    match chunk_step(&self.buf, pos)? {
                        Some(Chunk::Next(next)) => pos = next,
                        Some(Chunk::End) => break,
                        None => read_more(stream, &mut self.buf).await?,
                    }
                }
            }
        }
        Ok((status, close))
    }
}

enum Body {
    Length(usize),
    Chunked,
}

enum Chunk {
    Next(usize),
    End,
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(4096);
    }
    let n = stream.read_buf(buf).await?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server"));
    }
    Ok(())
}

/// The response head, once complete: its length, status, body framing and whether the server closes after it.
fn parse_head(buf: &[u8]) -> io::Result<Option<(usize, u16, Body, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let mut body = Body::Length(0);
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
            body = Body::Length(len.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.eq_ignore_ascii_case(b"chunked") {
            body = Body::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some((n, status, body, close)))
}

/// One step through a chunked body starting at `pos`: the next chunk's position, the end, or `None` (need more).
fn chunk_step(buf: &[u8], pos: usize) -> io::Result<Option<Chunk>> {
    let Some(line_end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let line = std::str::from_utf8(&buf[pos..pos + line_end]).unwrap_or("");
    let size_text = line.split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(size_text, 16)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
    let data = pos + line_end + 2;
    if size == 0 {
        // No trailers expected: the body ends with an empty line.
        return Ok((buf.len() >= data + 2).then_some(Chunk::End));
    }
    Ok((buf.len() >= data + size + 2).then_some(Chunk::Next(data + size + 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sized_and_chunked_responses() {
        let sized = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";
        let (n, status, body, close) = parse_head(sized).unwrap().unwrap();
        assert_eq!((status, close), (202, false));
        assert!(matches!(body, Body::Length(2)));
        assert_eq!(n, sized.len() - 2);

        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (n, _, body, close) = parse_head(chunked).unwrap().unwrap();
        assert!(close && matches!(body, Body::Chunked));
        let Some(Chunk::Next(p)) = chunk_step(chunked, n).unwrap() else { panic!("first chunk") };
        assert!(matches!(chunk_step(chunked, p).unwrap(), Some(Chunk::End)));
        assert!(chunk_step(&chunked[..chunked.len() - 1], p).unwrap().is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }
}
