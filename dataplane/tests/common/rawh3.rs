//! A raw HTTP/3 client for hostile-peer tests: quinn plus hand-written frames, so a test can
//! send what no well-behaved HTTP/3 library would (huge declared frame lengths, unknown
//! frames, malformed field sections, QPACK encoder instructions, reset floods).
//!
//! Field sections are QPACK-encoded with literal field lines only (no dynamic table, no
//! Huffman). Responses are read just far enough to tell the `:status` (static-table entry or
//! a literal value, Huffman-coded digits included) from a stream reset.

use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use weir_bench::tls::Trust;

/// H3_REQUEST_CANCELLED (RFC 9114 §8.1).
pub const H3_REQUEST_CANCELLED: u32 = 0x10c;
/// H3_MESSAGE_ERROR.
pub const H3_MESSAGE_ERROR: u64 = 0x10e;
/// H3_EXCESSIVE_LOAD.
pub const H3_EXCESSIVE_LOAD: u64 = 0x107;
/// QPACK_ENCODER_STREAM_ERROR (RFC 9204 §6).
pub const QPACK_ENCODER_STREAM_ERROR: u64 = 0x201;
/// A reserved ("grease") frame type, 0x1f * N + 0x21 (RFC 9114 §7.2.8).
pub const GREASE_FRAME: u64 = 0x1f * 7 + 0x21;

/// Appends a QUIC variable-length integer (RFC 9000 §16).
pub fn put_varint(buf: &mut BytesMut, v: u64) {
    if v < 1 << 6 {
        buf.put_u8(v as u8);
    } else if v < 1 << 14 {
        buf.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        buf.put_u32(0x8000_0000 | v as u32);
    } else {
        buf.put_u64(0xc000_0000_0000_0000 | v);
    }
}

/// Appends a QPACK/HPACK prefixed integer with an `n`-bit prefix; `flags` are the bits above.
fn put_prefix_int(buf: &mut BytesMut, n: u8, flags: u8, v: u64) {
    let max = (1u64 << n) - 1;
    if v < max {
        buf.put_u8(flags | v as u8);
        return;
    }
    buf.put_u8(flags | max as u8);
    let mut rest = v - max;
    while rest >= 128 {
        buf.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    buf.put_u8(rest as u8);
}

/// A QPACK field section of literal field lines with literal names, in the order given
/// (RFC 9204 §4.5.6); pseudo-headers are just names starting with ':'.
pub fn field_section(fields: &[(&str, &str)]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0); // Required Insert Count 0
    b.put_u8(0); // Base 0
    for (name, value) in fields {
        put_prefix_int(&mut b, 3, 0b0010_0000, name.len() as u64);
        b.put_slice(name.as_bytes());
        put_prefix_int(&mut b, 7, 0, value.len() as u64);
        b.put_slice(value.as_bytes());
    }
    b.freeze()
}

/// A whole frame: type, length, payload.
pub fn frame(ty: u64, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    put_varint(&mut b, ty);
    put_varint(&mut b, payload.len() as u64);
    b.put_slice(payload);
    b.freeze()
}

/// A frame header alone, declaring `len` payload bytes.
pub fn frame_header(ty: u64, len: u64) -> Bytes {
    let mut b = BytesMut::new();
    put_varint(&mut b, ty);
    put_varint(&mut b, len);
    b.freeze()
}

/// HEADERS frame with the given fields.
pub fn headers(fields: &[(&str, &str)]) -> Bytes {
    frame(0x01, &field_section(fields))
}

/// DATA frame.
pub fn data(payload: &[u8]) -> Bytes {
    frame(0x00, payload)
}

/// The usual request pseudo-headers for `method` and `path` on host `x.test`.
pub fn request_fields<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", "x.test"),
        (":path", path),
    ]
}

/// How a request stream ended, seen from the client.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A response head with this status.
    Status(u16),
    /// The server reset the response stream with this code.
    Reset(u64),
    /// The connection was closed (application error code, if any).
    ConnectionClosed(Option<u64>),
    /// The stream ended without a response head.
    NoResponse,
}

/// A QUIC connection speaking HTTP/3 by hand. The control stream (with an empty SETTINGS
/// frame) is opened at connect and kept open: closing it is a connection error.
pub struct RawH3 {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub control: quinn::SendStream,
}

impl RawH3 {
    pub async fn connect(addr: SocketAddr) -> RawH3 {
        let tls = weir_bench::tls::client_config(&Trust::Insecure, &[b"h3"]).expect("TLS config");
        let cfg = weir_bench::h3client::quic_client_config(&tls).expect("QUIC config");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("UDP bind");
        endpoint.set_default_client_config(cfg);
        let conn = endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("QUIC handshake");
        let mut control = conn.open_uni().await.expect("open control stream");
        let mut b = BytesMut::new();
        put_varint(&mut b, 0x00); // control stream
        b.put_slice(&frame(0x04, &[])); // SETTINGS, none
        control.write_all(&b).await.expect("write SETTINGS");
        RawH3 {
            endpoint,
            conn,
            control,
        }
    }

    /// Opens a request stream and writes `bytes`; `fin` ends the request.
    pub async fn open(
        &self,
        bytes: &[Bytes],
        fin: bool,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        for b in bytes {
            if send.write_all(b).await.is_err() {
                break;
            }
        }
        if fin {
            let _ = send.finish();
        }
        Ok((send, recv))
    }

    /// Sends a whole request (`bytes`, then FIN) and reads how its response starts.
    pub async fn request(&self, bytes: &[Bytes]) -> Outcome {
        match self.open(bytes, true).await {
            Ok((_send, recv)) => response(recv).await,
            Err(e) => closed(&e),
        }
    }

    /// Waits until the server closes the connection; its application error code.
    pub async fn closed(&self) -> Option<u64> {
        match tokio::time::timeout(super::HANG_GUARD, self.conn.closed()).await {
            Ok(e) => match closed(&e) {
                Outcome::ConnectionClosed(code) => code,
                other => panic!("not a close: {other:?}"),
            },
            Err(_) => panic!("the server did not close the connection"),
        }
    }
}

fn closed(e: &quinn::ConnectionError) -> Outcome {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            Outcome::ConnectionClosed(Some(c.error_code.into_inner()))
        }
        _ => Outcome::ConnectionClosed(None),
    }
}

/// Reads the response stream to its end and returns how its response started.
pub async fn response(mut recv: quinn::RecvStream) -> Outcome {
    let outcome = response_head(&mut recv).await;
    if matches!(outcome, Outcome::Status(_)) {
        // Read the rest like a well-behaved client: a response stream dropped unread is
        // stopped (quinn sends STOP_SENDING), which the server may count as a cancellation.
        let _ = recv.read_to_end(usize::MAX).await;
    }
    outcome
}

/// Reads the response stream up to the first HEADERS frame and returns its status.
pub async fn response_head(recv: &mut quinn::RecvStream) -> Outcome {
    let mut buf = BytesMut::new();
    loop {
        if let Some((ty, payload, used)) = parse_frame(&buf) {
            if ty == 0x01 {
                return Outcome::Status(status(&payload).expect("a :status in the response"));
            }
            let _ = buf.split_to(used); // grease or other frames before the head
            continue;
        }
        let read = tokio::time::timeout(super::HANG_GUARD, recv.read_chunk(64 * 1024, true))
            .await
            .expect("response hang");
        match read {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Outcome::NoResponse,
            Err(quinn::ReadError::Reset(code)) => return Outcome::Reset(code.into_inner()),
            Err(quinn::ReadError::ConnectionLost(e)) => return closed(&e),
            Err(e) => panic!("reading the response: {e}"),
        }
    }
}

fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    if b.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for x in &b[1..len] {
        v = (v << 8) | u64::from(*x);
    }
    Some((v, len))
}

/// One complete frame at the start of `b`: (type, payload, bytes used).
fn parse_frame(b: &[u8]) -> Option<(u64, Bytes, usize)> {
    let (ty, a) = get_varint(b)?;
    let (len, c) = get_varint(&b[a..])?;
    let start = a + c;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (b.len() >= end).then(|| (ty, Bytes::copy_from_slice(&b[start..end]), end))
}

/// QPACK static-table entries holding a `:status` (RFC 9204 Appendix A).
fn static_status(index: u64) -> Option<u16> {
    Some(match index {
        24 => 103,
        25 => 200,
        26 => 304,
        27 => 404,
        28 => 503,
        63 => 100,
        64 => 204,
        65 => 206,
        66 => 302,
        67 => 400,
        68 => 403,
        69 => 421,
        70 => 425,
        71 => 500,
        _ => return None,
    })
}

fn get_prefix_int(b: &[u8], n: u8) -> Option<(u64, usize)> {
    let max = (1u64 << n) - 1;
    let v = u64::from(*b.first()?) & max;
    if v < max {
        return Some((v, 1));
    }
    let (mut v, mut shift, mut i) = (max, 0, 1);
    loop {
        let x = *b.get(i)?;
        v += u64::from(x & 0x7f) << shift;
        i += 1;
        shift += 7;
        if x & 0x80 == 0 {
            return Some((v, i));
        }
    }
}

/// The `:status` of a response field section (its first field line, as servers send it).
fn status(section: &[u8]) -> Option<u16> {
    let line = section.get(2..)?; // Required Insert Count and Base, both 0 without a table
    let first = *line.first()?;
    if first & 0xc0 == 0xc0 {
        // Indexed field line, static table.
        return static_status(get_prefix_int(line, 6)?.0);
    }
    if first & 0xf0 == 0x50 || first & 0xf0 == 0x70 {
        // Literal field line with a static name reference: the name must be :status.
        let (index, used) = get_prefix_int(line, 4)?;
        static_status(index)?;
        let value = &line[used..];
        let huffman = value.first()? & 0x80 != 0;
        let (len, used) = get_prefix_int(value, 7)?;
        let raw = value.get(used..used + usize::try_from(len).ok()?)?;
        let digits = if huffman {
            huffman_digits(raw)?
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        return digits.parse().ok();
    }
    None
}

/// Decodes HPACK Huffman codes for the digits 0-9 (the only characters of a status):
/// '0'..'2' are the 5-bit codes 0..2, '3'..'9' the 6-bit codes 25..31 (RFC 7541 Appendix B).
pub fn huffman_digits(raw: &[u8]) -> Option<String> {
    let bits: Vec<u8> = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < bits.len() {
        let rest = &bits[i..];
        if rest.len() < 8 && rest.iter().all(|b| *b == 1) {
            break; // EOS padding
        }
        let v5 = rest.get(..5)?.iter().fold(0u8, |a, b| a << 1 | b);
        if v5 <= 2 {
            out.push(char::from(b'0' + v5));
            i += 5;
            continue;
        }
        let v6 = rest.get(..6)?.iter().fold(0u8, |a, b| a << 1 | b);
        if !(25..=31).contains(&v6) {
            return None;
        }
        out.push(char::from(b'0' + 3 + (v6 - 25)));
        i += 6;
    }
    Some(out)
}
