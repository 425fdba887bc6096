//! WebSocket frame codec (RFC 6455 §5) for the client side: parses the
//! unmasked frames a server sends and encodes masked client frames.

use anyhow::{Result, bail};

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// Header of one parsed frame; the payload is `buf[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Offset of the payload in the parsed buffer.
    pub start: usize,
    /// End of the payload (= bytes consumed by the frame).
    pub end: usize,
}

/// Parses one server frame at the start of `buf`. `Ok(None)` means more
/// bytes are needed. Frames larger than `max_payload` are an error.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<Head>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        bail!("reserved bits set in server frame");
    }
    if b1 & 0x80 != 0 {
        bail!("server frame is masked");
    }
    let (len, hdr) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > max_payload as u64 {
        bail!("server frame of {len} bytes exceeds the limit");
    }
    let end = hdr + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Head {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        start: hdr,
        end,
    }))
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Cheap xorshift generator for masking keys (not security relevant: the
/// traffic never leaves the loopback interface).
#[derive(Debug, Clone)]
pub struct MaskGen(u64);

impl MaskGen {
    /// Seeds the generator; a zero seed is replaced.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Next masking key.
    pub fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x as u32).to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => v.push(n as u8),
            n if n <= 0xffff => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_all_length_forms() {
        for n in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload = vec![b'x'; n];
            let f = server_frame(OP_TEXT, true, &payload);
            let h = parse(&f, 1 << 20).unwrap().unwrap();
            assert_eq!(h.end, f.len());
            assert_eq!(&f[h.start..h.end], &payload[..]);
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            // every strict prefix is incomplete
            for cut in [0, 1, h.start.saturating_sub(1), f.len() - 1] {
                if cut < f.len() {
                    assert_eq!(parse(&f[..cut], 1 << 20).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn rejects_masked_reserved_and_oversized() {
        assert!(parse(&[0x81, 0x81, 0, 0, 0, 0, 0], 100).is_err());
        assert!(parse(&[0xC1, 0x00], 100).is_err());
        assert!(parse(&server_frame(OP_TEXT, true, &[0; 200]), 100).is_err());
    }

    #[test]
    fn masks_round_trip() {
        let mut out = Vec::new();
        encode_masked(OP_TEXT, b"hello world", [1, 2, 3, 4], &mut out);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 11);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i & 3])
            .collect();
        assert_eq!(unmasked, b"hello world");
        let mut big = Vec::new();
        encode_masked(OP_BINARY, &[7; 1000], [0; 4], &mut big);
        assert_eq!(big[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([big[2], big[3]]), 1000);
    }

    #[test]
    fn mask_generator_varies() {
        let mut g = MaskGen::new(0);
        let a = g.next_mask();
        let b = g.next_mask();
        assert_ne!(a, b);
    }
}
