//! `Framed` over both transports: TCP on the loopback interface, a Unix socket pair.

use std::net::{Ipv4Addr, TcpListener, TcpStream};

use super::*;
use crate::wire::Fd;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A connected TCP pair on the loopback interface.
fn tcp_pair() -> (Framed, Framed) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    (
        Framed::new(a.into(), Transport::Tcp).unwrap(),
        Framed::new(b.into(), Transport::Tcp).unwrap(),
    )
}

fn payload(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|j| (j * 31 + seed) as u8).collect()
}

/// Sends `sizes` one frame each from `a` while `b` receives them, and checks each.
async fn round_trip(a: &Framed, b: &Framed, sizes: &[usize]) {
    let send = async {
        for (i, &n) in sizes.iter().enumerate() {
            let body = payload(n, i);
            a.send(&mut FrameBuf::of(&(i, serde_bytes::Bytes::new(&body))).unwrap())
                .await
                .unwrap();
        }
    };
    let recv = async {
        for (i, &n) in sizes.iter().enumerate() {
            let (j, got) = b
                .recv()
                .await
                .unwrap()
                .decode::<(usize, serde_bytes::ByteBuf)>()
                .unwrap();
            assert_eq!(j, i);
            assert!(
                got.into_vec() == payload(n, i),
                "frame {i} ({n} bytes) changed"
            );
        }
    };
    tokio::join!(send, recv);
}

#[test]
fn tcp_carries_frames_of_every_size() {
    runtime().block_on(async {
        let (a, b) = tcp_pair();
        assert_eq!(a.transport(), Transport::Tcp);
        assert_eq!(Transport::of(a.as_fd()).unwrap(), Transport::Tcp);
        // Small, medium, one past the hand-over size, and one far larger than the
        // socket's buffers (it goes out in many writes while the peer reads).
        round_trip(&a, &b, &[0, 1, 1000, 70_000, 8 << 20, 3]).await;
        // And the other way, with several frames in one batch.
        let mut batch: Vec<FrameBuf> = (0..50u32)
            .map(|i| FrameBuf::of(&(i, "batched")).unwrap())
            .collect();
        batch.push(FrameBuf::of(&serde_bytes::Bytes::new(&payload(300_000, 7))).unwrap());
        let (sent, got) = tokio::join!(b.send_batch(&mut batch), async {
            let mut got = Vec::new();
            for _ in 0..50 {
                got.push(
                    a.recv_one()
                        .await
                        .unwrap()
                        .decode::<(u32, String)>()
                        .unwrap()
                        .0,
                );
            }
            let big = a.recv().await.unwrap().decode::<serde_bytes::ByteBuf>();
            (got, big.unwrap().into_vec())
        });
        sent.unwrap();
        assert_eq!(got.0, (0..50).collect::<Vec<_>>());
        assert!(got.1 == payload(300_000, 7));
    });
}

#[test]
fn a_descriptor_is_refused_over_tcp_and_the_connection_stays_usable() {
    runtime().block_on(async {
        let (a, b) = tcp_pair();
        let (x, _y) = sys::socketpair_stream().unwrap();
        let holding = (7u32, Fd::from(x));
        let mut frame = FrameBuf::of(&holding).unwrap();
        let e = a.send(&mut frame).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("descriptor") && m.contains("TCP")),
            "{e:?}"
        );
        let e = a
            .send_batch(&mut [FrameBuf::of(&1u8).unwrap(), FrameBuf::of(&holding).unwrap()])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let e = a.send_blocking(&mut FrameBuf::of(&holding).unwrap()).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        // Nothing of the refused frames went out: the next frame is the first to arrive.
        a.send(&mut FrameBuf::of(&"after").unwrap()).await.unwrap();
        let got = b.recv().await.unwrap().decode::<String>().unwrap();
        assert_eq!(got, "after");
        assert!(!b.has_input(), "nothing else was sent");
        round_trip(&a, &b, &[10, 100_000]).await;
    });
}

#[test]
fn unix_carries_descriptors_beside_frames() {
    runtime().block_on(async {
        let (a, b) = sys::socketpair_stream().unwrap();
        let (a, b) = (Framed::unix(a).unwrap(), Framed::unix(b).unwrap());
        assert_eq!(Transport::of(a.as_fd()).unwrap(), Transport::Unix);
        let (x, y) = sys::socketpair_stream().unwrap();
        a.send(&mut FrameBuf::of(&(1u32, Fd::from(x))).unwrap())
            .await
            .unwrap();
        let (n, x) = b.recv().await.unwrap().decode::<(u32, Fd)>().unwrap();
        assert_eq!(n, 1);
        // The descriptor that arrived is the same socket: what goes in one end comes out
        // of the other.
        let (x, y) = (
            Framed::unix(x.into_owned()).unwrap(),
            Framed::unix(y).unwrap(),
        );
        x.send_blocking(&mut FrameBuf::of(&"through").unwrap())
            .unwrap();
        assert_eq!(
            y.recv_blocking().unwrap().decode::<String>().unwrap(),
            "through"
        );
        round_trip(&a, &b, &[0, 70_000, 4 << 20]).await;
        drop(a);
        assert!(matches!(b.recv().await, Err(Error::Closed)));
        assert!(matches!(b.try_recv(), Some(Err(Error::Closed))));
    });
}

/// A connected Unix socket pair.
fn unix_pair() -> (Framed, Framed) {
    let (a, b) = crate::sys::socketpair_stream().unwrap();
    (Framed::unix(a).unwrap(), Framed::unix(b).unwrap())
}

/// Sends 3000-byte frames with `try_send_now` until the socket no longer takes one whole,
/// then ends with `last` sent by `finish_with`; `b` must read every frame whole and in
/// order, `last` at the end. Returns how the first frame not sent whole went.
async fn fill_then<F: std::future::Future<Output = ()>>(
    a: &Framed,
    b: &Framed,
    finish_with: impl FnOnce() -> F,
) -> Now {
    let filler = vec![9u8; 3000];
    let mut whole = 0usize;
    let stopped = loop {
        match a
            .try_send_now(&mut FrameBuf::of(&serde_bytes::Bytes::new(&filler)).unwrap())
            .unwrap()
        {
            Now::Sent => whole += 1,
            other => break other,
        }
        assert!(whole < 100_000, "the socket never filled");
    };
    let expected = whole + usize::from(stopped == Now::Begun);
    if stopped == Now::Begun {
        // Nothing passes the rest of a frame begun.
        assert_eq!(
            a.try_send_now(&mut FrameBuf::of(&1u64).unwrap()).unwrap(),
            Now::Not
        );
    }
    let reader = async {
        for _ in 0..expected {
            let v = b
                .recv()
                .await
                .unwrap()
                .decode::<serde_bytes::ByteBuf>()
                .unwrap();
            assert_eq!(v, filler, "a frame arrived cut or mixed");
        }
        b.recv().await.unwrap().decode::<u64>().unwrap()
    };
    let (last, ()) = tokio::join!(reader, finish_with());
    assert_eq!(last, 7, "the last frame came out of order");
    stopped
}

#[test]
fn a_small_frame_goes_out_at_once_and_a_part_taken_is_finished_first() {
    runtime().block_on(async {
        for tcp in [false, true] {
            let (a, b) = if tcp { tcp_pair() } else { unix_pair() };
            assert_eq!(
                a.try_send_now(&mut FrameBuf::of(&1u64).unwrap()).unwrap(),
                Now::Sent
            );
            assert_eq!(b.recv().await.unwrap().decode::<u64>().unwrap(), 1);
            // The next frame sent by the async path comes after the rest.
            fill_then(&a, &b, || async {
                a.send(&mut FrameBuf::of(&7u64).unwrap()).await.unwrap()
            })
            .await;
            // `finish` alone completes a frame begun, and one not begun costs nothing.
            fill_then(&a, &b, || async {
                a.finish().await.unwrap();
                a.send_batch(&mut [FrameBuf::of(&7u64).unwrap()])
                    .await
                    .unwrap()
            })
            .await;
        }
    });
}

#[test]
fn a_frame_begun_on_tcp_is_finished_before_any_other() {
    // TCP takes part of a frame when its buffer is all but full: seen here at least once
    // in a few tries, each followed by a check of the stream.
    runtime().block_on(async {
        let mut begun = 0;
        for _ in 0..20 {
            let (a, b) = tcp_pair();
            if fill_then(&a, &b, || async {
                a.finish().await.unwrap();
                a.send(&mut FrameBuf::of(&7u64).unwrap()).await.unwrap()
            })
            .await
                == Now::Begun
            {
                begun += 1;
            }
        }
        assert!(begun > 0, "no TCP send took part of a frame in 20 fills");
    });
}

#[test]
fn large_frames_and_descriptors_are_not_sent_at_once() {
    runtime().block_on(async {
        let (a, _b) = unix_pair();
        let big = vec![1u8; NOW_MAX];
        assert_eq!(
            a.try_send_now(&mut FrameBuf::of(&serde_bytes::Bytes::new(&big)).unwrap())
                .unwrap(),
            Now::Not
        );
        let fd = Fd::from(crate::sys::dup_fd(std::os::fd::AsFd::as_fd(&a)).unwrap());
        assert_eq!(
            a.try_send_now(&mut FrameBuf::of(&fd).unwrap()).unwrap(),
            Now::Not
        );
    });
}
