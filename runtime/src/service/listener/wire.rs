//! The connection's socket as hyper sees it: reads tell the connection's [`Activity`] when a
//! request head begins, and the bare error responses hyper writes itself are replaced.
//!
//! hyper answers a request it cannot parse (400), a URI too long (414) or a head over the buffer
//! limit (431) on its own, before any service runs, with an empty body and no hook to change it. A
//! client of a Marty service gets problem+json with an `x-request-id` for every error, so those few
//! bytes are swapped here: a response head that hyper wrote (the service's own always carry an
//! `x-request-id`) with one of those statuses and no body.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::Activity;
use super::transport::Transport;
use crate::service::problem::{Problem, ProblemType};

/// A connection's stream watched for the connection's timeouts, with hyper's bare errors replaced.
pub(super) struct WatchedIo {
    /// Taken only when dropped, to linger.
    stream: Option<Transport>,
    activity: Arc<Activity>,
    first_read: bool,
    /// A replacement response still to be written, and how much of it was.
    replacement: Option<(Vec<u8>, usize)>,
}

impl WatchedIo {
    pub(super) fn new(stream: Transport, activity: Arc<Activity>) -> Self {
        WatchedIo { stream: Some(stream), activity, first_read: true, replacement: None }
    }

    fn stream(&mut self) -> Pin<&mut Transport> {
        Pin::new(self.stream.as_mut().expect("the stream is taken only when dropped"))
    }

    /// Writes what is left of a replacement response.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(self.stream.as_mut().expect("not dropped")).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` in place of hyper's bare error response when it is one.
    fn replaces(&mut self, head: &[u8]) -> bool {
        if self.activity.is_http2() {
            return false;
        }
        match bare_error_status(head) {
            Some(status) => {
                self.replacement = Some((problem_response(status), 0));
                true
            }
            None => false,
        }
    }
}

/// The status of `head` when it is a complete, bodiless 400, 414 or 431 that hyper wrote.
fn bare_error_status(head: &[u8]) -> Option<StatusCode> {
    let status_line = head.get(..13)?;
    let status = match status_line.strip_prefix(b"HTTP/1.1 ").or_else(|| status_line.strip_prefix(b"HTTP/1.0 "))? {
        b"400 " => StatusCode::BAD_REQUEST,
        b"414 " => StatusCode::URI_TOO_LONG,
        b"431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let whole_head =
        head.ends_with(b"\r\n\r\n") && head.windows(4).position(|w| w == b"\r\n\r\n") == Some(head.len() - 4);
    let from_service = head.to_ascii_lowercase().windows(15).any(|w| w == b"\r\nx-request-id:");
    (whole_head && !from_service).then_some(status)
}

fn problem_response(status: StatusCode) -> Vec<u8> {
    let (kind, detail) = match status {
        StatusCode::URI_TOO_LONG => (ProblemType::UriTooLong, "the request URI is too long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            (ProblemType::HeadersTooLarge, "the request's headers are too large")
        }
        _ => (ProblemType::BadRequest, "the request is not valid HTTP"),
    };
    let request_id = crate::service::layer::generate_request_id();
    let request_id = request_id.to_str().expect("generated ids are hex");
    let body = Problem::marty(status, kind, detail).instance(request_id).to_json();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        crate::service::PROBLEM_JSON,
        body.len(),
    )
    .into_bytes()
}

impl AsyncRead for WatchedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(this.stream().poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.activity.bytes_read(read, std::mem::take(&mut this.first_read));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        if this.replaces(buf) {
            // Reported as written: hyper goes on to flush and close, which write the replacement.
            let _ = this.poll_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        this.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        let mut non_empty = bufs.iter().filter(|buf| !buf.is_empty());
        if let (Some(head), None) = (non_empty.next(), non_empty.next()) {
            if this.replaces(head) {
                let _ = this.poll_replacement(cx)?;
                return Poll::Ready(Ok(head.len()));
            }
        }
        this.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(Transport::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        this.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        this.stream().poll_shutdown(cx)
    }
}

impl Drop for WatchedIo {
    fn drop(&mut self) {
        if let (true, Some(stream)) = (self.activity.lingers(), self.stream.take()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(linger(stream));
            }
        }
    }
}

/// Reads and drops what the client still sends, for 2 s at most, before closing: closing a socket
/// with unread data resets it, and the client would lose the answer it was sent.
async fn linger(mut stream: Transport) {
    use tokio::io::AsyncReadExt;
    const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
    let mut sink = [0u8; 8192];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_bodiless_errors_are_replaced() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 04:00:00 GMT\r\n\r\n";
        assert_eq!(bare_error_status(hyper), Some(StatusCode::BAD_REQUEST));
        let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_error_status(too_large), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let from_service = b"HTTP/1.1 400 Bad Request\r\nx-request-id: 1f\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bare_error_status(from_service), None, "the service's own 400 passes");
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nno";
        assert_eq!(bare_error_status(with_body), None);
        assert_eq!(bare_error_status(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(bare_error_status(b"HTTP/1.1 400"), None);
    }
}
