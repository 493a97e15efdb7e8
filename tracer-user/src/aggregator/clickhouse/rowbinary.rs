//! Rows for `INSERT ... FORMAT RowBinary`, encoded here rather than through
//! the clickhouse crate's typed `Insert`: the tests need the exact bytes the
//! store sends, to prove a current ClickHouse decodes them too
//! (`tests.rs`, through chdb), and the typed insert does not expose them.
//! The format is plain: integers little-endian at their width, strings as
//! a LEB128 length and the bytes.

/// One insert's body, row after row.
#[derive(Debug, Default)]
pub struct RowBinary {
    buf: Vec<u8>,
    rows: usize,
}

impl RowBinary {
    /// An empty body with room for `bytes`: a group's `events` insert is
    /// tens of MB, and growing it by doubling copied it about twice.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let mut n = b.len() as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.buf.push(byte);
                break;
            }
            self.buf.push(byte | 0x80);
        }
        self.buf.extend_from_slice(b);
        self
    }

    /// Marks the end of a row (for counting only).
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_carry_a_leb128_length() {
        let mut r = RowBinary::default();
        r.i64(-2).u32(7).str("ab").bytes(&[b'x'; 200]);
        let b = r.into_bytes();
        assert_eq!(&b[..8], &(-2i64).to_le_bytes());
        assert_eq!(&b[8..12], &[7, 0, 0, 0]);
        assert_eq!(&b[12..15], &[2, b'a', b'b']);
        // 200 = 0b1_1001000: 0xc8 then 0x01.
        assert_eq!(&b[15..17], &[0xc8, 0x01]);
        assert_eq!(b.len(), 17 + 200);
    }
}
