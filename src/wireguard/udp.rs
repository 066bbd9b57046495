//! The WireGuard socket's datagrams in batches: `recvmmsg` and `sendmmsg`, one system call for up to `BATCH`
//! datagrams each way.
//!
//! `Datagrams` is what the task's batching logic (`receive_batch`, `Outbound`) needs of a socket, so that the
//! logic is tested with a stand-in (`tests/batch.rs`). `Socket` is the real one: the calls go through
//! tokio's `try_io`, so that a `WouldBlock` clears the readiness tokio reported, as `try_recv_from` and
//! `try_send_to` did.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::peers::BUFFER_SIZE;

/// Datagrams read or sent in one system call at most; also the datagrams the task reads, and the packets it
/// encrypts, before it looks at its other work.
pub const BATCH: usize = 64;

/// What the WireGuard task needs of its socket.
pub trait Datagrams {
    /// Receives up to `max` datagrams (at most `BATCH`) into `slots`; returns how many (at least one), or
    /// `WouldBlock`, or the error of the first (an error after some datagrams comes with the next call).
    fn receive(&mut self, slots: &mut Received, max: usize) -> io::Result<usize>;

    /// Sends the datagrams in order (at most `BATCH`); returns how many were sent (at least one), or the
    /// error of the first. A datagram that failed after others were sent is the first of the next call.
    fn send(&mut self, datagrams: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize>;
}

/// Where received datagrams land: `BATCH` buffers each big enough for any datagram, and each one's length and
/// source. The buffers are never cleared (the pages no datagram reached are never touched: about a page per
/// buffer is resident, not 4 MiB); what is read of them is what a datagram wrote.
pub struct Received {
    bufs: Vec<Box<[MaybeUninit<u8>]>>,
    /// Of each buffer, the length of its datagram (written, all of it) and its source.
    meta: Vec<(usize, SocketAddr)>,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            bufs: (0..BATCH).map(|_| Box::new_uninit_slice(BUFFER_SIZE)).collect(),
            meta: vec![(0, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH],
        }
    }
}

impl Received {
    /// The i-th datagram of the last `receive`, and its source.
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (len, src) = self.meta[i];
        let written = &self.bufs[i][..len];
        // SAFETY: `meta` gives a length only to bytes that were written (by the kernel in `recvmmsg`, or by
        // `fill`), and MaybeUninit<u8> has the layout of u8.
        (src, unsafe {
            &*(written as *const [MaybeUninit<u8>] as *const [u8])
        })
    }

    /// Puts a datagram into slot i, as `receive` does (for a stand-in socket).
    #[cfg(test)]
    pub fn fill(&mut self, i: usize, src: SocketAddr, datagram: &[u8]) {
        for (to, from) in self.bufs[i].iter_mut().zip(datagram) {
            to.write(*from);
        }
        self.meta[i] = (datagram.len().min(BUFFER_SIZE), src);
    }
}

/// The task's socket.
pub struct Socket(pub UdpSocket);

impl Datagrams for Socket {
    fn receive(&mut self, slots: &mut Received, max: usize) -> io::Result<usize> {
        let fd = self.0.as_raw_fd();
        self.0.try_io(Interest::READABLE, || recvmmsg(fd, slots, max))
    }

    fn send(&mut self, datagrams: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
        let fd = self.0.as_raw_fd();
        self.0.try_io(Interest::WRITABLE, || sendmmsg(fd, datagrams))
    }
}

/// One `recvmmsg` without waiting (MSG_DONTWAIT), of up to `max` datagrams (at most `BATCH`). A datagram
/// from an address that is not IP (never on a UDP socket) is left out.
pub fn recvmmsg(fd: RawFd, slots: &mut Received, max: usize) -> io::Result<usize> {
    let n = max.min(BATCH);
    let mut addrs = [const { MaybeUninit::<libc::sockaddr_storage>::zeroed() }; BATCH];
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
    for (iov, buf) in iovs.iter_mut().zip(&mut slots.bufs).take(n) {
        iov.write(libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        });
    }
    let (addr, iov) = (
        addrs.as_mut_ptr().cast::<libc::sockaddr_storage>(),
        iovs.as_mut_ptr().cast::<libc::iovec>(),
    );
    for (i, hdr) in hdrs.iter_mut().enumerate().take(n) {
        // SAFETY: i < BATCH, within both arrays.
        hdr.write(unsafe { header(addr.add(i), SOCKADDR_SIZE, iov.add(i)) });
    }
    // SAFETY: the first n headers are initialized and point at live buffers of the lengths given and at
    // address storage of the size given; the kernel writes only there and into those headers.
    let got = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr().cast(),
            n as _,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut kept = 0;
    for i in 0..got as usize {
        // SAFETY: initialized above, and the kernel filled in the first `got`; the storage was zeroed.
        let (hdr, addr) = unsafe { (hdrs[i].assume_init_ref(), addrs[i].assume_init_ref()) };
        let Some(src) = from_sockaddr(addr, hdr.msg_hdr.msg_namelen) else {
            continue;
        };
        // Without MSG_TRUNC the length is what was written: a datagram larger than the buffer is cut, as
        // recv_from cuts it.
        let len = (hdr.msg_len as usize).min(slots.bufs[i].len());
        slots.bufs.swap(kept, i);
        slots.meta[kept] = (len, src);
        kept += 1;
    }
    Ok(kept)
}

/// One `sendmmsg` without waiting, of up to `BATCH` datagrams (the first `BATCH` of those given).
pub fn sendmmsg(fd: RawFd, datagrams: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    let n = datagrams.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut addrs = [const { MaybeUninit::<libc::sockaddr_storage>::zeroed() }; BATCH];
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
    let mut lens = [0; BATCH];
    for (i, (addr, datagram)) in datagrams[..n].iter().enumerate() {
        // SAFETY: zeroed, which is a valid sockaddr_storage.
        lens[i] = to_sockaddr(addr, unsafe { addrs[i].assume_init_mut() });
        iovs[i].write(libc::iovec {
            iov_base: datagram.as_ptr() as *mut libc::c_void,
            iov_len: datagram.len(),
        });
    }
    let (addr, iov) = (
        addrs.as_mut_ptr().cast::<libc::sockaddr_storage>(),
        iovs.as_mut_ptr().cast::<libc::iovec>(),
    );
    for (i, hdr) in hdrs.iter_mut().enumerate().take(n) {
        // SAFETY: i < BATCH, within both arrays.
        hdr.write(unsafe { header(addr.add(i), lens[i], iov.add(i)) });
    }
    // SAFETY: the first n headers are initialized and point at live datagrams and addresses of the lengths
    // given; the kernel only reads them (and writes the headers' msg_len).
    let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr().cast(), n as _, libc::MSG_DONTWAIT as _) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

const SOCKADDR_SIZE: libc::socklen_t = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// A header of one datagram in one buffer, without control messages.
fn header(
    addr: *mut libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    iov: *mut libc::iovec,
) -> libc::mmsghdr {
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut hdr: libc::mmsghdr = unsafe { mem::zeroed() };
    hdr.msg_hdr.msg_name = addr.cast();
    hdr.msg_hdr.msg_namelen = addr_len;
    hdr.msg_hdr.msg_iov = iov;
    hdr.msg_hdr.msg_iovlen = 1;
    hdr
}

/// Writes the C form of `addr` into `out` and returns its length: sockaddr_in or sockaddr_in6, as tokio's
/// `send_to` does (the kernel sends an IPv4 address given to a dual-stack IPv6 socket over IPv4).
pub fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is larger than and aligned for both sockaddr_in and sockaddr_in6.
    match addr {
        SocketAddr::V4(a) => {
            let sin = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote, as `recv_from` gives it (an IPv4 client of a dual-stack socket as an
/// IPv4-mapped IPv6 address); None for a family that is not IP.
pub fn from_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    // SAFETY: the family says which of the two the kernel wrote, and the length that it wrote all of it.
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
