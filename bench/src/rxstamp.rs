//! Kernel receive timestamps (`SO_TIMESTAMPNS`) for subscriber sockets.
//!
//! The generator shares the machine's CPUs with the server, so the time between a frame reaching
//! the client's kernel and the generator parsing it includes the generator's own backlog. With
//! this option every read also returns when the kernel queued the data (the last segment of the
//! read, so a read of several frames over-states the earlier ones' latency, never under-states
//! it), and reports can show both figures.

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, RecvMsg, recvmsg, setsockopt, sockopt::ReceiveTimestampns,
};
use nix::sys::time::TimeSpec;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Asks the kernel to timestamp data received on `stream`.
pub fn enable(stream: &TcpStream) -> io::Result<()> {
    setsockopt(stream, ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// A control-message buffer big enough for one timestamp.
pub fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(TimeSpec)
}

/// Reads into `buf` once the socket is readable; returns the byte count and the kernel's receive
/// time in ns since the Unix epoch (`None` when the kernel attached none, e.g. at end of stream).
pub async fn read(
    stream: &TcpStream,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, Option<u64>)> {
    loop {
        stream.readable().await?;
        let fd = stream.as_raw_fd();
        let r = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let msg: RecvMsg<'_, '_, ()> =
                recvmsg(fd, &mut iov, Some(&mut *cmsg), MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)?;
            let stamp = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|m| match m {
                    ControlMessageOwned::ScmTimestampns(ts) => {
                        let ns = ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128;
                        u64::try_from(ns).ok()
                    }
                    _ => None,
                })
            });
            Ok((msg.bytes, stamp))
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::now_ns;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_read_carries_the_kernel_receive_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        enable(&client).unwrap();
        let mut buf = [0u8; 16];
        let mut cmsg = cmsg_buffer();
        // The kernel turns receive timestamping on asynchronously (a static key flipped by a
        // work item), so the first segments after `enable` may come without one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let before = now_ns();
            server.write_all(b"hello").await.unwrap();
            let (n, stamp) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                read(&client, &mut buf, &mut cmsg),
            )
            .await
            .expect("data in time")
            .unwrap();
            let after = now_ns();
            assert_eq!(&buf[..n], b"hello");
            if let Some(stamp) = stamp {
                assert!(
                    (before..=after).contains(&stamp),
                    "{before} <= {stamp} <= {after}"
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no receive timestamp within 5 s"
            );
        }
    }
}
