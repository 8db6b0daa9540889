//! The nfnetlink transport under every conversation: a `NETLINK_NETFILTER` socket with a
//! receive timeout, requests with their sequence numbers, answers split into whole messages.

use std::{io, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    DefaultNla, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_REQUEST,
};
use netlink_packet_netfilter::NetfilterMessage;
use netlink_sys::{protocols::NETLINK_NETFILTER, SocketAddr};

/// netlink-sys 0.9.0 has no setter for SO_RCVTIMEO nor SO_RCVBUFFORCE.
pub(super) fn setsockopt<T>(fd: &impl AsRawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `NETLINK_NETFILTER` socket whose receives give up after `timeout` (EAGAIN), so that a
/// dead kernel answer cannot hang ct-trace.
pub(super) struct Socket(pub(super) netlink_sys::Socket);

impl Socket {
    pub(super) fn open(timeout: Duration) -> io::Result<Self> {
        let sock = netlink_sys::Socket::new(NETLINK_NETFILTER)?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        Ok(Self(sock))
    }

    /// A socket bound to a port the kernel picks (an unbound socket gets no multicast) and
    /// subscribed to the nfnetlink multicast `groups`, its receive buffer raised to `rcvbuf`
    /// (SO_RCVBUFFORCE, root; best effort: without it the default buffer is used).
    pub(super) fn subscribe(timeout: Duration, groups: &[u32], rcvbuf: i32) -> io::Result<Self> {
        let mut sock = Self::open(timeout)?;
        sock.0.bind_auto()?;
        for g in groups {
            sock.0.add_membership(*g)?;
        }
        let _ = setsockopt(&sock.0, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf);
        Ok(sock)
    }

    /// Sends `msg` to the kernel as a request; returns its sequence number.
    pub(super) fn request(&self, msg: NetfilterMessage, flags: u16) -> io::Result<u32> {
        let seq = next_seq();
        self.0
            .send_to(&encode(msg, flags, seq), &SocketAddr::new(0, 0), 0)?;
        Ok(seq)
    }

    /// One datagram into `buf` (`flags`: `recv(2)`'s).
    pub(super) fn recv<'b>(&self, buf: &'b mut [u8], flags: i32) -> io::Result<&'b [u8]> {
        let n = self.0.recv(&mut &mut buf[..], flags)?;
        Ok(&buf[..n.min(buf.len())])
    }

    /// Receives the answer to request `seq` until its DONE or ACK/error, calling `f` with each
    /// of its messages. Messages of other requests (a late answer to one that timed out) are
    /// skipped.
    pub(super) fn answer(&self, seq: u32, mut f: impl FnMut(NetfilterMessage)) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            for frame in frames(self.recv(&mut buf, 0)?) {
                let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(frame) {
                    Ok(m) if m.header.sequence_number == seq => m,
                    Ok(_) => continue,
                    Err(e) => {
                        log::debug!("undecodable nfnetlink message: {e}");
                        continue;
                    }
                };
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                    NetlinkPayload::Error(e) => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(m) => f(m),
                    _ => {}
                }
            }
        }
    }
}

/// `SO_ATTACH_FILTER` (include/uapi/asm-generic/socket.h; the same on x86 and arm); libc
/// 0.2.191 defines it only for Android and L4Re.
const SO_ATTACH_FILTER: i32 = 26;

impl Socket {
    /// Attaches a classic BPF socket filter: the kernel runs it on every message before it
    /// queues it for this socket (`sk_filter()` in `do_one_broadcast()`, net/netlink/af_netlink.c)
    /// and drops those it returns 0 for.
    pub(super) fn attach_filter(&self, prog: &[libc::sock_filter]) -> io::Result<()> {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr().cast_mut(),
        };
        setsockopt(&self.0, libc::SOL_SOCKET, SO_ATTACH_FILTER, &fprog)
    }
}

/// A whole request made by hand (header included).
impl Socket {
    pub(super) fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.0.send_to(msg, &SocketAddr::new(0, 0), 0).map(|_| ())
    }
}

/// The sequence number of the next request.
pub(super) fn next_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A whole request: netlink header (`NLM_F_REQUEST | flags`, `seq`) and `msg`.
pub(super) fn encode(msg: NetfilterMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// The netlink messages of a datagram, each whole; stops at a length that does not fit.
pub(super) fn frames(mut b: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = NetlinkBuffer::new_checked(b).ok()?.length() as usize;
        let frame = &b[..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some(frame)
    })
}

/// The value of an attribute the crate leaves untyped (`DefaultNla` keeps it private).
pub(super) fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}
