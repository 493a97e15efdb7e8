//! Reading ingest bodies within hard limits: the bytes on the wire
//! (`--max-body`) and the bytes after zstd decompression
//! (`--max-decompressed`). Neither limit can be passed by a crafted body: the
//! wire bytes are counted as they arrive; a frame that records its size is
//! refused when that size is over the cap and otherwise decoded into a
//! buffer of that size (zstd fails a frame that holds more); any other body
//! streams into a buffer that stops one byte past the cap, with the zstd
//! window itself capped, so a "zstd bomb" costs at most the cap.

use std::{io::Read as _, time::Duration};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

/// The largest zstd window accepted (2^23 = 8 MiB, what `zstd -19` uses).
/// Frames asking for more are refused before anything is allocated.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// After the limit is passed, up to this much more of the body is read and
/// thrown away (for at most [`DRAIN_TIME`]) so the client sees the 413
/// instead of a reset connection.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("decompressed, the body is larger than {limit} bytes")]
    DecompressedTooLarge { limit: u64 },
    #[error("reading the body: {0}")]
    Read(String),
    #[error("the body is not valid zstd: {0}")]
    BadZstd(String),
}

/// Reads the whole body, failing once more than `limit` bytes arrived.
pub async fn read_limited(body: Body, limit: u64) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            let mut drained = 0u64;
            let drain = async {
                while let Some(Ok(c)) = stream.next().await {
                    drained += c.len() as u64;
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            };
            // Timing out only ends the draining early.
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Decompresses one or more zstd frames, failing as soon as the output
/// would pass `limit`. Blocking (CPU): call it off the async workers.
pub fn zstd_decompress(data: &[u8], limit: u64) -> Result<Vec<u8>, BodyError> {
    match one_frame_size(data) {
        Some(size) if size > limit => Err(BodyError::DecompressedTooLarge { limit }),
        // Anything odd about the frame is left to the streaming decoder,
        // which says what is wrong with it.
        Some(size) => decompress_sized(data, size).or_else(|_| decompress_streaming(data, limit)),
        None => decompress_streaming(data, limit),
    }
}

/// The size a body of exactly one zstd frame says it decompresses to, if
/// its frame header records it (agents compress each batch in one call,
/// which records it, `forward.rs`). zstd checks the size while decoding,
/// so a frame that lies fails instead of writing past it.
fn one_frame_size(data: &[u8]) -> Option<u64> {
    let frame = zstd::zstd_safe::find_frame_compressed_size(data).ok()?;
    if frame != data.len() {
        return None;
    }
    zstd::zstd_safe::get_frame_content_size(data).ok().flatten()
}

/// Decompresses a frame of known size into a buffer of that size, in one
/// call. Why not the streaming decoder: it copies its output out of its
/// window and grows the buffer by doubling; decompressing took ~16% of
/// the aggregator's CPU under load, about half of it those copies
/// (docs/benchmarks.md, 2026-12-07).
/// A huge claimed size costs no memory until written: the buffer's pages
/// are only mapped, and a frame that is not that large fails first.
fn decompress_sized(data: &[u8], size: u64) -> std::io::Result<Vec<u8>> {
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    decompressor.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
        ZSTD_WINDOW_LOG_MAX,
    ))?;
    let size = usize::try_from(size).map_err(std::io::Error::other)?;
    decompressor.decompress(data, size)
}

fn decompress_streaming(data: &[u8], limit: u64) -> Result<Vec<u8>, BodyError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data)
        .map_err(|e| BodyError::BadZstd(e.to_string()))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| BodyError::BadZstd(e.to_string()))?;
    let mut out = Vec::new();
    // `take` stops the decoder one byte past the limit, whatever the frame
    // claims its content size is.
    let read = decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| {
            let msg = e.to_string();
            if msg.contains("Frame requires too much memory") {
                BodyError::DecompressedTooLarge { limit }
            } else {
                BodyError::BadZstd(msg)
            }
        })?;
    if read as u64 > limit {
        return Err(BodyError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn zeros_compressed(n: usize) -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            enc.write_all(&chunk[..k]).unwrap();
            left -= k;
        }
        enc.finish().unwrap()
    }

    #[test]
    fn zstd_roundtrip_within_limit() {
        let data = zstd::encode_all(&b"hello hello hello"[..], 3).unwrap();
        assert_eq!(zstd_decompress(&data, 17).unwrap(), b"hello hello hello");
        assert!(matches!(
            zstd_decompress(&data, 16),
            Err(BodyError::DecompressedTooLarge { limit: 16 })
        ));
    }

    #[test]
    fn zstd_bomb_stops_at_the_cap() {
        let bomb = zeros_compressed(256 << 20);
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        let start = std::time::Instant::now();
        assert!(matches!(
            zstd_decompress(&bomb, 1 << 20),
            Err(BodyError::DecompressedTooLarge { .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    /// What agents send: one frame that records its size.
    #[test]
    fn a_sized_frame_decodes_in_one_call_within_the_limit() {
        let data = zstd::bulk::compress(b"hello hello hello", 3).unwrap();
        assert_eq!(one_frame_size(&data), Some(17));
        assert_eq!(zstd_decompress(&data, 17).unwrap(), b"hello hello hello");
        assert!(matches!(
            zstd_decompress(&data, 16),
            Err(BodyError::DecompressedTooLarge { limit: 16 })
        ));
        // Two frames: decoded by the streaming decoder, both of them.
        let two = [data.clone(), data].concat();
        assert_eq!(one_frame_size(&two), None);
        assert_eq!(
            zstd_decompress(&two, 34).unwrap(),
            b"hello hello hellohello hello hello"
        );
    }

    /// A batch larger than the 8 MiB window limit, compressed as agents
    /// do: its frame is not single-segment (its window is the level's,
    /// 2 MiB at level 3), so it decodes in one call within the limit.
    #[test]
    fn a_sized_frame_over_the_window_limit_decodes() {
        let text: Vec<u8> = (0..12_000_000u32)
            .map(|i| {
                b"abcdefghijklmnopqrstuvwxyz"[(i.wrapping_mul(2_654_435_761) >> 27) as usize % 26]
            })
            .collect();
        let data = zstd::bulk::compress(&text, 3).unwrap();
        // The frame header descriptor's single-segment bit.
        assert_eq!(data[4] & 0x20, 0);
        assert_eq!(one_frame_size(&data), Some(12_000_000));
        assert_eq!(decompress_sized(&data, 12_000_000).unwrap(), text);
        assert_eq!(zstd_decompress(&data, 16 << 20).unwrap(), text);
    }

    #[test]
    fn a_sized_bomb_is_refused_by_its_header() {
        let bomb = zstd::bulk::compress(&vec![0u8; 256 << 20], 3).unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            zstd_decompress(&bomb, 1 << 20),
            Err(BodyError::DecompressedTooLarge { limit: 1_048_576 })
        ));
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    /// A frame header that claims less than the frame holds: an error,
    /// never a buffer written past or a short body taken as whole.
    #[test]
    fn a_frame_that_lies_about_its_size_is_refused() {
        let text = b"0123456789abcdef0123456789abcdef0123456789";
        let mut data = zstd::bulk::compress(text, 3).unwrap();
        assert_eq!(one_frame_size(&data), Some(text.len() as u64));
        // Single-segment frame: the size is the byte after the 4-byte
        // magic number and the frame header descriptor.
        assert_eq!(data[5], text.len() as u8);
        data[5] = 20;
        assert_eq!(one_frame_size(&data), Some(20));
        assert!(matches!(
            zstd_decompress(&data, 1 << 20),
            Err(BodyError::BadZstd(_))
        ));
    }

    #[test]
    fn garbage_is_bad_zstd() {
        assert!(matches!(
            zstd_decompress(b"definitely not zstd", 1 << 20),
            Err(BodyError::BadZstd(_))
        ));
    }

    #[test]
    fn huge_window_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(27).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.write_all(&[7u8; 1 << 16]).unwrap();
        let data = enc.finish().unwrap();
        assert!(zstd_decompress(&data, 1 << 30).is_err());
    }

    #[tokio::test]
    async fn body_limit() {
        let body = Body::from(vec![1u8; 100]);
        assert_eq!(read_limited(body, 100).await.unwrap().len(), 100);
        let body = Body::from(vec![1u8; 101]);
        assert!(matches!(
            read_limited(body, 100).await,
            Err(BodyError::TooLarge { limit: 100 })
        ));
    }
}
