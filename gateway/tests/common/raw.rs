//! HTTP/1.1 by hand, for requests no well-behaved client would send: odd paths, repeated
//! headers, bodies that come slowly or in chunks.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as read off the socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as the response envelope, or `None` when it is not one.
    pub fn envelope(&self) -> Option<Value> {
        let value: Value = serde_json::from_slice(&self.body).ok()?;
        let object = value.as_object()?;
        let shaped = object.len() == 3
            && object.get("status").is_some_and(Value::is_boolean)
            && object.get("message").is_some_and(Value::is_string)
            && object.contains_key("data");
        shaped.then_some(value)
    }

    pub fn message(&self) -> String {
        self.envelope().and_then(|v| v["message"].as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// An open connection to the gateway.
pub struct RawConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to the gateway");
        stream.set_nodelay(true).expect("nodelay");
        Self { stream, buffer: Vec::new() }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to the gateway");
    }

    /// Writes, tolerating a peer that already answered and closed.
    pub async fn write_lenient(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next response, or `None` if the connection closes first or `timeout` passes.
    pub async fn read_reply(&mut self, timeout: Duration) -> Option<RawReply> {
        tokio::time::timeout(timeout, self.read_reply_inner()).await.ok().flatten()
    }

    async fn read_reply_inner(&mut self) -> Option<RawReply> {
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        while self.buffer.len() < length {
            if !self.fill().await {
                return None;
            }
        }
        let body = self.buffer.drain(..length).collect();
        Some(RawReply { status, headers, body })
    }

    /// Whether the gateway closes the connection within `timeout`, reading whatever comes.
    pub async fn closes_within(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Sends one request on a new connection and reads the answer.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut connection = RawConnection::open(addr).await;
    connection.write(request).await;
    connection
        .read_reply(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(request)))
}

/// A request's bytes: request line, `Host`, the headers given, `Content-Length` unless a
/// `Transfer-Encoding` or `Content-Length` is among them, then the body as is.
pub fn request(method: &str, target: &[u8], headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256 + body.len());
    bytes.extend_from_slice(method.as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(target);
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: gateway\r\n");
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("transfer-encoding") || n.eq_ignore_ascii_case("content-length")
    });
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !framed {
        bytes.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// `body` in chunked transfer coding, `size` bytes per chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(body.len() + body.len() / size * 8 + 8);
    for chunk in body.chunks(size) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}
