//! TLS plaintext from uprobes on the OpenSSL linked into the target's own
//! executable (node links OpenSSL statically and exports its symbols).
//!
//! match-proto: OpenSSL `int SSL_write(SSL *s, const void *buf, int num)`,
//!   `int SSL_read(SSL *s, void *buf, int num)` (x86-64 SysV: args in
//!   rdi, rsi, rdx; return in rax).
//!
//! Which connection an `SSL *` belongs to: node's TLS runs over a memory
//! BIO, so the SSL object has no fd. But node feeds ciphertext to OpenSSL
//! right where it reads it: the read callback of a connection's socket calls
//! SSL_read on that connection's `SSL *` before the loop handles anything
//! else. So the first SSL_read after a read on a traced connection (same
//! thread) binds its `SSL *` to that connection, and consumes the read: an
//! SSL_read that follows no socket read (e.g. when a connection starts)
//! binds nothing. Binding on every such read also rebinds an `SSL *` address
//! the allocator reused for a new connection. An SSL_write followed by a
//! ciphertext write on a connection confirms or corrects the binding; the
//! binding is dropped when the connection closes. Bound sockets are marked
//! TLS so their ciphertext is no longer copied.
//!
//! Plaintext is copied at return, for the bytes OpenSSL accepted or
//! produced: node retries an SSL_write that failed (e.g. during the
//! handshake), so copying at entry would repeat it.
//!
//! Cost: each SSL_write and SSL_read is two uprobe hits (entry and return)
//! — traps, so this family is the expensive one (docs/architecture.md).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::Stream;

use crate::{
    emit::current_ids,
    probes::logs::{WriteArgs, emit_buffer},
};

/// `SSL *` -> `struct sock *` of its connection.
#[map]
static SSL_SOCK: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Connections bound to an `SSL *` (-> that `SSL *`): their ciphertext is
/// not copied, and their close unbinds the `SSL *`, whose address the
/// allocator may hand to the next connection.
#[map]
pub static TLS_SOCKS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// A traced connection each thread just read from, not yet claimed by an
/// SSL_read.
#[map]
pub static LAST_READ: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// An SSL_write whose ciphertext has not hit the socket yet, by thread.
#[map]
pub static SSL_WRITE_PENDING: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

/// SSL_read arguments between entry and return, by thread.
#[map]
static SSL_READ_ARGS: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(16384, 0);

/// SSL_write arguments between entry and return, by thread.
#[map]
static SSL_WRITE_ARGS: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(16384, 0);

/// Connections whose bytes were seen to be TLS records (the first record
/// of a connection is a handshake: 0x16 0x03 ...). Only these are bound to
/// an `SSL *`, so a plain HTTP connection of the same process never is.
#[map]
static TLS_LIKE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

#[inline(always)]
pub fn looks_tls(sk: u64) -> bool {
    TLS_LIKE.get_ptr(sk).is_some() || TLS_SOCKS.get_ptr(sk).is_some()
}

/// Mark `sk` as TLS if the user buffer at `buf` starts with a TLS record
/// header (content type 20..=23, major version 3).
#[inline(always)]
pub fn peek_record(sk: u64, buf: u64) {
    // SAFETY: two bytes of user memory; the helper faults cleanly.
    if let Ok(head) = unsafe { bpf_probe_read_user(buf as *const [u8; 2]) }
        && (20..=23).contains(&head[0])
        && head[1] == 3
    {
        let _ = TLS_LIKE.insert(sk, 1, 0);
    }
}

/// Mark `sk` as TLS (its first payload was a TLS record).
#[inline(always)]
pub fn mark_tls(sk: u64) {
    let _ = TLS_LIKE.insert(sk, 1, 0);
}

/// The connection `ssl` is bound to.
#[inline(always)]
fn sock_of(ssl: u64) -> Option<u64> {
    // SAFETY: value copied out immediately.
    unsafe { SSL_SOCK.get(ssl) }.copied()
}

#[inline(always)]
pub fn bind(ssl: u64, sk: u64) {
    // SAFETY: value copied out immediately.
    if let Some(old) = unsafe { SSL_SOCK.get(ssl) }.copied()
        && old != sk
    {
        // Rebound (the address was reused, or the first guess was wrong):
        // the old connection is no longer known to be this TLS session.
        let _ = TLS_SOCKS.remove(old);
    }
    let _ = SSL_SOCK.insert(ssl, sk, 0);
    let _ = TLS_SOCKS.insert(sk, ssl, 0);
}

/// Connection `sk` closed: forget its TLS binding, and that it was TLS (the
/// address may serve a plaintext connection next).
#[inline(always)]
pub fn unbind_sock(sk: u64) {
    let _ = TLS_LIKE.remove(sk);
    // SAFETY: value copied out immediately.
    if let Some(ssl) = unsafe { TLS_SOCKS.get(sk) }.copied() {
        // Only if the SSL * still points here (it may be bound anew).
        // SAFETY: as above.
        if unsafe { SSL_SOCK.get(ssl) }.copied() == Some(sk) {
            let _ = SSL_SOCK.remove(ssl);
        }
        let _ = TLS_SOCKS.remove(sk);
    }
    let _ = TLS_LIKE.remove(sk);
}

#[inline(always)]
fn emit(stream: Stream, sk: u64, buf: u64, len: u64) {
    let args = WriteArgs::new(0, stream, sk, buf);
    emit_buffer(&args, buf, len);
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    if let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        let _ = SSL_WRITE_ARGS.insert(tid, [ssl, buf], 0);
    }
    0
}

#[uretprobe]
pub fn ssl_write_exit(ctx: RetProbeContext) -> u32 {
    let (_, tid) = current_ids();
    // SAFETY: value copied out immediately.
    let Some([ssl, buf]) = (unsafe { SSL_WRITE_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = SSL_WRITE_ARGS.remove(tid);
    let ret: i32 = ctx.ret();
    if ret <= 0 {
        return 0;
    }
    // The ciphertext goes out next, on this thread: it confirms the binding.
    let _ = SSL_WRITE_PENDING.insert(tid, ssl, 0);
    // A client's first request: node retries the queued SSL_write from the
    // read callback that completed the handshake, before any SSL_read, so
    // an unbound `SSL *` takes the connection that was just read.
    let sk = sock_of(ssl).or_else(|| {
        // SAFETY: value copied out immediately.
        let sk = unsafe { LAST_READ.get(tid) }.copied()?;
        let _ = LAST_READ.remove(tid);
        bind(ssl, sk);
        Some(sk)
    });
    if let Some(sk) = sk {
        emit(Stream::TlsSent, sk, buf, ret as u64);
    }
    0
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    if let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        // The socket read this thread just did fed this SSL_read.
        // SAFETY: value copied out immediately.
        if let Some(sk) = unsafe { LAST_READ.get(tid) }.copied() {
            let _ = LAST_READ.remove(tid);
            bind(ssl, sk);
        }
        let _ = SSL_READ_ARGS.insert(tid, [ssl, buf], 0);
    }
    0
}

#[uretprobe]
pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
    let (_, tid) = current_ids();
    // SAFETY: value copied out immediately.
    let Some([ssl, buf]) = (unsafe { SSL_READ_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = SSL_READ_ARGS.remove(tid);
    let ret: i32 = ctx.ret();
    if ret > 0
        && let Some(sk) = sock_of(ssl)
    {
        emit(Stream::TlsReceived, sk, buf, ret as u64);
    }
    0
}
