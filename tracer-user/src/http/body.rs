//! Message-body framing: Content-Length, chunked (with trailers), until close.
//!
//! Written by hand rather than taken from a crate: httparse stops at the end of
//! the head (its `parse_chunk_size` handles one size line in one buffer), and
//! the streaming decoders we could reuse all want the body bytes. Here the body
//! arrives split at arbitrary points and, worse, mostly *not copied*: the
//! kernel hands over only a prefix of each read/write, so the machine must be
//! able to advance over N bytes it never sees ([`Body::skip`]) as long as it
//! knows they are payload. That is a dozen states, each one byte of lookahead,
//! so the result is the same however the stream is split.

use super::{MAX_CHUNK_EXT, MAX_HEAD};

/// A body's framing is broken (the connection must resynchronise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FramingError {
    /// Bytes of the body that came before the offending byte (counted
    /// whatever the reads were: the result must not depend on them).
    pub used: u64,
}

/// A framing byte that cannot be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BadByte;

/// Where the framing of one body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// A response without length: everything until the connection closes.
    UntilClose,
}

/// States of the chunked decoder (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Reading the hex chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: whitespace and `;chunk-ext`, up to the line end.
    Ext {
        value: u64,
        len: usize,
    },
    /// Saw CR at the end of the size line.
    SizeLf {
        value: u64,
    },
    /// Chunk payload still to come.
    Data(u64),
    /// The CRLF after a chunk's payload.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the empty line that ends the body;
    /// `total` counts trailer bytes so far (capped like a head).
    TrailerStart {
        total: usize,
    },
    TrailerLine {
        total: usize,
    },
    TrailerLf {
        total: usize,
        empty: bool,
    },
}

/// Result of feeding bytes or a gap to a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    /// Bytes that belong to this body.
    pub used: u64,
    /// The body ended with the last used byte.
    pub done: bool,
}

impl Body {
    /// A chunked body at its first size line.
    pub(super) fn chunked() -> Self {
        Body::Chunked(Chunked::Size {
            value: 0,
            digits: 0,
        })
    }

    /// Consumes the captured bytes `data` (stops at the end of the body).
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<Progress, FramingError> {
        match self {
            Body::UntilClose => Ok(Progress {
                used: data.len() as u64,
                done: false,
            }),
            Body::Length(remaining) => {
                let used = (*remaining).min(data.len() as u64);
                *remaining -= used;
                Ok(Progress {
                    used,
                    done: *remaining == 0,
                })
            }
            Body::Chunked(state) => {
                let mut i = 0usize;
                while i < data.len() {
                    if let Chunked::Data(remaining) = state {
                        let take = (*remaining).min((data.len() - i) as u64);
                        *remaining -= take;
                        // `take` is at most `data.len() - i`, a usize.
                        i += take as usize;
                        if *remaining == 0 {
                            *state = Chunked::DataCr;
                        }
                        continue;
                    }
                    let b = data[i];
                    if state
                        .byte(b)
                        .map_err(|BadByte| FramingError { used: i as u64 })?
                    {
                        i += 1;
                        return Ok(Progress {
                            used: i as u64,
                            done: true,
                        });
                    }
                    i += 1;
                }
                Ok(Progress {
                    used: i as u64,
                    done: false,
                })
            }
        }
    }

    /// Advances over `n` bytes that were moved but not captured. Payload can be
    /// skipped (so can the CRLF after a chunk, whose length is known); a gap
    /// over anything that must be read (a size line, a trailer) cannot, and
    /// then `used < n` with `done == false`: the framing is lost.
    pub(super) fn skip(&mut self, n: u64) -> Progress {
        match self {
            Body::UntilClose => Progress {
                used: n,
                done: false,
            },
            Body::Length(remaining) => {
                let used = (*remaining).min(n);
                *remaining -= used;
                Progress {
                    used,
                    done: *remaining == 0,
                }
            }
            Body::Chunked(state) => {
                let mut used = 0u64;
                loop {
                    let left = n - used;
                    if left == 0 {
                        break;
                    }
                    match state {
                        Chunked::Data(remaining) => {
                            let take = (*remaining).min(left);
                            *remaining -= take;
                            used += take;
                            if *remaining == 0 {
                                *state = Chunked::DataCr;
                            }
                        }
                        Chunked::DataCr => {
                            used += 1;
                            *state = Chunked::DataLf;
                        }
                        Chunked::DataLf => {
                            used += 1;
                            *state = Chunked::Size {
                                value: 0,
                                digits: 0,
                            };
                        }
                        _ => break,
                    }
                }
                Progress { used, done: false }
            }
        }
    }
}

impl Chunked {
    /// One byte. Returns true when this byte ended the body.
    fn byte(&mut self, b: u8) -> Result<bool, BadByte> {
        *self = match *self {
            Chunked::Size { value, digits } => match hex(b) {
                Some(d) => {
                    // 15 hex digits = 2^60 bytes: anything longer is garbage.
                    if digits >= 15 {
                        return Err(BadByte);
                    }
                    Chunked::Size {
                        value: value << 4 | u64::from(d),
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(BadByte),
                None => match b {
                    b'\r' => Chunked::SizeLf { value },
                    b'\n' => Chunked::after_size(value),
                    b';' | b' ' | b'\t' => Chunked::Ext { value, len: 1 },
                    _ => return Err(BadByte),
                },
            },
            Chunked::Ext { value, len } => match b {
                b'\r' => Chunked::SizeLf { value },
                b'\n' => Chunked::after_size(value),
                _ if len >= MAX_CHUNK_EXT => return Err(BadByte),
                _ => Chunked::Ext {
                    value,
                    len: len + 1,
                },
            },
            Chunked::SizeLf { value } => match b {
                b'\n' => Chunked::after_size(value),
                _ => return Err(BadByte),
            },
            // Payload is consumed in bulk by `Body::feed`; one byte at a time is
            // the same thing.
            Chunked::Data(remaining) if remaining > 1 => Chunked::Data(remaining - 1),
            Chunked::Data(_) => Chunked::DataCr,
            Chunked::DataCr => match b {
                b'\r' => Chunked::DataLf,
                b'\n' => Chunked::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(BadByte),
            },
            Chunked::DataLf => match b {
                b'\n' => Chunked::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(BadByte),
            },
            Chunked::TrailerStart { total } => match b {
                b'\r' => Chunked::TrailerLf { total, empty: true },
                b'\n' => return Ok(true),
                _ => Chunked::TrailerLine {
                    total: trailer_total(total)?,
                },
            },
            Chunked::TrailerLine { total } => match b {
                b'\r' => Chunked::TrailerLf {
                    total,
                    empty: false,
                },
                b'\n' => Chunked::TrailerStart { total },
                _ => Chunked::TrailerLine {
                    total: trailer_total(total)?,
                },
            },
            Chunked::TrailerLf { total, empty } => match b {
                b'\n' if empty => return Ok(true),
                b'\n' => Chunked::TrailerStart { total },
                _ => return Err(BadByte),
            },
        };
        Ok(false)
    }

    /// The state after a size line: the payload, or the trailers after the
    /// last (zero-size) chunk.
    fn after_size(value: u64) -> Chunked {
        if value == 0 {
            Chunked::TrailerStart { total: 0 }
        } else {
            Chunked::Data(value)
        }
    }
}

fn trailer_total(total: usize) -> Result<usize, BadByte> {
    if total >= MAX_HEAD {
        Err(BadByte)
    } else {
        Ok(total + 1)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
