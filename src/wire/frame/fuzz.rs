//! Random and mutated frames through the receive buffer and the decoders: every outcome is a
//! frame or an error, never a panic, a hang or an allocation of a claimed length.

use super::header::HEADER_LEN;
use super::out::FrameBuf;
use super::recv::{READ_CHUNK, RESERVE_AT_ONCE, RecvBuf};
use crate::wire::{Hello, codec};

#[derive(serde::Serialize)]
enum Reply {
    Refused(String),
}

/// xorshift64*: deterministic, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |f: &mut FrameBuf| {
        f.seal().unwrap();
        out.push(f.parts().concat());
    };
    push(&mut FrameBuf::of(&Hello::ours()).unwrap());
    push(&mut FrameBuf::of(&Reply::Refused("a reason".into())).unwrap());
    push(&mut FrameBuf::of(&(1u32, "text", vec![1u8; 300], -5i64, 2.5f64)).unwrap());
    push(&mut FrameBuf::of(&vec![vec![(1u8, 'x')]; 20]).unwrap());
    out
}

fn feed_all(bytes: &[u8], rng: &mut Rng) -> usize {
    let mut rb = RecvBuf::new();
    let mut frames = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(700));
        let n = rb.feed(&rest[..n]);
        rest = &rest[n..];
        // What a claimed length may reserve at once, untouched until bytes arrive; past
        // it, the buffer follows what arrived.
        assert!(
            rb.buffer_len() <= RESERVE_AT_ONCE.max(2 * (bytes.len() + READ_CHUNK)),
            "buffer grew past what arrived: {} bytes for {}",
            rb.buffer_len(),
            bytes.len()
        );
        loop {
            match rb.next_frame() {
                Ok(Some(f)) => {
                    frames += 1;
                    let _ = codec::decode::<Hello>(f.body(), vec![]).map(|h| h.check().is_ok());
                    let _ = codec::decode::<(u32, String, Vec<u8>, i64, f64)>(f.body(), vec![]);
                    let _ = codec::decode::<Vec<Vec<(u8, char)>>>(f.body(), vec![]);
                    let _ = codec::value_len(f.body());
                }
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
    }
    let _ = rb.at_eof();
    frames
}

#[test]
fn ten_thousand_random_and_mutated_frames() {
    // The buffer's own growth is checked: a kept buffer (memory already held) could be
    // larger than what arrived.
    super::received::NO_KEPT_BUFFERS.with(|c| c.set(true));
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let valid = valid_frames();
    let mut decoded = 0;
    for i in 0..12_000 {
        let mut bytes = valid[rng.below(valid.len())].clone();
        match i % 6 {
            0 => {
                // pure noise
                let n = rng.below(2000);
                bytes = (0..n).map(|_| rng.next() as u8).collect();
            }
            1 => {
                // bit flips
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                // truncation
                bytes.truncate(rng.below(bytes.len()));
            }
            3 => {
                // absurd or lying length header
                let len = match rng.below(3) {
                    0 => u32::MAX,
                    1 => (rng.next() as u32) | 0x8000_0000,
                    _ => rng.below(bytes.len() * 2) as u32,
                };
                bytes[..4].copy_from_slice(&len.to_be_bytes());
            }
            4 => {
                // a descriptor count with no descriptors behind it
                bytes[4] = 1 + rng.below(250) as u8;
            }
            _ => {
                // body bytes replaced by MessagePack markers claiming huge containers
                for _ in 0..1 + rng.below(4) {
                    let at = HEADER_LEN + rng.below(bytes.len() - HEADER_LEN);
                    bytes[at] = [0xdd, 0xdf, 0xc6, 0xdb, 0xc9, 0xc1][rng.below(6)];
                }
            }
        }
        decoded += feed_all(&bytes, &mut rng);
    }
    // Unmutated truncations and some bit flips in the body still decode as frames.
    assert!(decoded > 1000, "only {decoded} frames came through");
}

#[test]
fn garbage_in_a_decoder_never_allocates_what_it_claims() {
    // An array header claiming 4 billion elements followed by nothing.
    let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
    assert!(codec::decode::<Vec<u64>>(&bytes, vec![]).is_err());
    let bytes = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2];
    assert!(codec::decode::<Vec<u8>>(&bytes, vec![]).is_err());
}
