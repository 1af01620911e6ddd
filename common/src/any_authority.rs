//! Any `:authority` on a unix socket. gRPC clients other than Go's send the
//! socket's path (or an escaped form of it) as the HTTP/2 `:authority` of
//! requests on a unix socket; the HTTP/2 server under tonic refuses such a
//! value as malformed and resets the stream, so Probe fails for, say,
//! Python's grpcio. On a unix socket the authority means nothing, so every
//! request header block coming in is rewritten to carry `localhost`.
//!
//! The rewrite works on the client's byte stream: frames pass through
//! untouched except HEADERS (with their CONTINUATIONs), whose HPACK block is
//! walked field by field. A literal `:authority` field gets the value
//! `localhost` (plain, not Huffman-coded) with its indexing kind kept, so
//! the decoder's dynamic table stays in step with the client's: later
//! references to that entry read `localhost` too. Everything else is copied
//! byte for byte. A stream it cannot parse is passed on unchanged (the
//! server then says what is wrong, as it would have).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's default (and smallest) maximum frame size.
const MAX_FRAME: usize = 16_384;
/// The value every `:authority` gets.
const AUTHORITY: &[u8] = b"localhost";

/// A connection whose incoming request headers carry a valid `:authority`.
pub struct AnyAuthority<S> {
    inner: S,
    /// Bytes read from `inner`, not yet passed on.
    raw: Vec<u8>,
    /// Bytes ready for the reader.
    out: Vec<u8>,
    /// Connection preface seen (and passed on).
    preface: bool,
    /// A header block being collected across CONTINUATION frames:
    /// (stream id, flags of the HEADERS frame, priority bytes, block).
    pending: Option<(u32, u8, Vec<u8>, Vec<u8>)>,
    /// The stream was not HTTP/2 as expected: pass everything through.
    passthrough: bool,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            out: Vec::new(),
            preface: false,
            pending: None,
            passthrough: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be decided from `raw` to `out`.
    fn process(&mut self) {
        if self.passthrough {
            self.out.append(&mut self.raw);
            return;
        }
        if !self.preface {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.passthrough = true;
                return self.process();
            }
            if n < PREFACE.len() {
                return;
            }
            self.out.extend(self.raw.drain(..PREFACE.len()));
            self.preface = true;
        }
        while self.raw.len() >= 9 {
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            if self.raw.len() < 9 + len {
                return;
            }
            let frame: Vec<u8> = self.raw.drain(..9 + len).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let payload = &frame[9..];
            match kind {
                HEADERS => {
                    let Some((prio, block)) = split_headers(flags, payload) else {
                        self.passthrough = true;
                        self.out.extend(frame);
                        return self.process();
                    };
                    self.pending = Some((stream, flags, prio, block));
                    if flags & END_HEADERS != 0 {
                        self.flush_headers();
                    }
                }
                CONTINUATION if self.pending.as_ref().is_some_and(|p| p.0 == stream) => {
                    if let Some(p) = self.pending.as_mut() {
                        p.3.extend_from_slice(payload);
                    }
                    if flags & END_HEADERS != 0 {
                        self.flush_headers();
                    }
                }
                _ => self.out.extend(frame),
            }
        }
    }

    /// Emits the collected header block, rewritten, as HEADERS (+ CONTINUATION).
    fn flush_headers(&mut self) {
        let Some((stream, flags, prio, block)) = self.pending.take() else {
            return;
        };
        let block = rewrite_block(&block).unwrap_or(block);
        let mut first = prio;
        let head_room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(block.len().min(head_room));
        first.extend_from_slice(head);
        let keep = flags & (END_STREAM | PRIORITY);
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        frame(&mut self.out, HEADERS, keep | end, stream, &first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let end = if rest.is_empty() { END_HEADERS } else { 0 };
            frame(&mut self.out, CONTINUATION, end, stream, chunk);
        }
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A HEADERS payload's priority bytes and header block fragment (padding
/// dropped).
fn split_headers(flags: u8, payload: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let prio_len = if flags & PRIORITY != 0 { 5 } else { 0 };
    if p.len() < prio_len + pad {
        return None;
    }
    let (prio, rest) = p.split_at(prio_len);
    Some((prio.to_vec(), rest[..rest.len() - pad].to_vec()))
}

/// An HPACK integer with an `n`-bit prefix at `b[*at]`.
fn int(b: &[u8], at: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut v = (*b.get(*at)? as usize) & max;
    *at += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*at)? as usize;
        *at += 1;
        v = v.checked_add((byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string at `b[*at]`: (huffman, bytes).
fn string<'a>(b: &'a [u8], at: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *b.get(*at)? & 0x80 != 0;
    let len = int(b, at, 7)?;
    let s = b.get(*at..*at + len)?;
    *at += len;
    Some((huffman, s))
}

fn put_int(out: &mut Vec<u8>, first: u8, n: u32, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = v - max;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The header block with every literal `:authority` value replaced; None
/// when it does not parse (then it is passed on unchanged).
fn rewrite_block(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let first = b[at];
        let (prefix, mask) = match first {
            f if f & 0x80 != 0 => {
                int(b, &mut at, 7)?; // indexed field
                out.extend_from_slice(&b[start..at]);
                continue;
            }
            f if f & 0xc0 == 0x40 => (6, 0x40), // literal, incremental indexing
            f if f & 0xe0 == 0x20 => {
                int(b, &mut at, 5)?; // dynamic table size update
                out.extend_from_slice(&b[start..at]);
                continue;
            }
            f => (4, f & 0xf0), // literal without indexing / never indexed
        };
        let index = int(b, &mut at, prefix)?;
        let name = match index {
            0 => Some(string(b, &mut at)?),
            _ => None,
        };
        let _value = string(b, &mut at)?;
        let is_authority = index == 1 || name == Some((false, b":authority".as_slice()));
        if !is_authority {
            out.extend_from_slice(&b[start..at]);
            continue;
        }
        put_int(&mut out, mask, prefix, index);
        if let Some((huffman, n)) = name {
            put_int(&mut out, if huffman { 0x80 } else { 0 }, 7, n.len());
            out.extend_from_slice(n);
        }
        put_int(&mut out, 0, 7, AUTHORITY.len());
        out.extend_from_slice(AUTHORITY);
    }
    Some(out)
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            if !me.out.is_empty() {
                let n = me.out.len().min(buf.remaining());
                buf.put_slice(&me.out[..n]);
                me.out.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // EOF: whatever is left goes out as it came.
                    me.out.append(&mut me.raw);
                    if me.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    me.raw.extend_from_slice(rb.filled());
                    me.process();
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for AnyAuthority<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(flags: u8, stream: u32, block: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        frame(&mut v, HEADERS, flags, stream, block);
        v
    }

    /// A block as grpcio writes one: `:method POST` (indexed), `:scheme
    /// http` (indexed), `:path` literal, `:authority` literal with
    /// incremental indexing naming the socket path.
    fn grpcio_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86];
        b.push(0x44); // :path, name index 4, incremental indexing
        b.push(b"/csi.v1.Identity/Probe".len() as u8);
        b.extend_from_slice(b"/csi.v1.Identity/Probe");
        b.push(0x41); // :authority, name index 1, incremental indexing
        b.push(authority.len() as u8);
        b.extend_from_slice(authority);
        b.push(0xbe); // an indexed reference to the dynamic table
        b
    }

    fn run(input: &[u8], feed: usize) -> Vec<u8> {
        let mut a = AnyAuthority::new(());
        let mut out = Vec::new();
        for chunk in input.chunks(feed) {
            a.raw.extend_from_slice(chunk);
            a.process();
            out.append(&mut a.out);
        }
        out
    }

    #[test]
    fn the_authority_becomes_localhost_and_the_rest_passes_unchanged() {
        let block = grpcio_block(b"/tmp/node.sock");
        let mut input = PREFACE.to_vec();
        let mut settings = Vec::new();
        frame(&mut settings, 0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        input.extend_from_slice(&settings);
        input.extend(headers(END_HEADERS, 1, &block));
        let mut data = Vec::new();
        frame(&mut data, 0x0, END_STREAM, 1, b"\0\0\0\0\0");
        input.extend_from_slice(&data);
        for feed in [1, 7, input.len()] {
            let out = run(&input, feed);
            let mut want = PREFACE.to_vec();
            want.extend_from_slice(&settings);
            want.extend(headers(END_HEADERS, 1, &grpcio_block(b"localhost")));
            want.extend_from_slice(&data);
            assert_eq!(out, want, "fed {feed} bytes at a time");
        }
    }

    #[test]
    fn continuations_padding_and_huffman_names_are_handled() {
        let block = grpcio_block(b"%2Ftmp%2Fcsi.sock");
        let (a, b) = block.split_at(5);
        let mut input = PREFACE.to_vec();
        // HEADERS padded with 3 bytes, then a CONTINUATION with END_HEADERS.
        let mut payload = vec![3];
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        input.extend(headers(PADDED | END_STREAM, 3, &payload));
        let mut cont = Vec::new();
        frame(&mut cont, CONTINUATION, END_HEADERS, 3, b);
        input.extend_from_slice(&cont);
        let out = run(&input, 5);
        let mut want = PREFACE.to_vec();
        want.extend(headers(
            END_STREAM | END_HEADERS,
            3,
            &grpcio_block(b"localhost"),
        ));
        assert_eq!(out, want);
        // A literal name ":authority" (not from the static table).
        let mut named = vec![0x00, 10];
        named.extend_from_slice(b":authority");
        named.push(4);
        named.extend_from_slice(b"a/b!");
        let mut expect = vec![0x00, 10];
        expect.extend_from_slice(b":authority");
        expect.push(9);
        expect.extend_from_slice(b"localhost");
        assert_eq!(rewrite_block(&named).unwrap(), expect);
        // Long integers round-trip.
        let mut v = Vec::new();
        put_int(&mut v, 0x40, 6, 1337);
        let mut at = 0;
        assert_eq!(int(&v, &mut at, 6), Some(1337));
    }

    #[test]
    fn what_is_not_http2_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(&input, 3), input);
    }
}
