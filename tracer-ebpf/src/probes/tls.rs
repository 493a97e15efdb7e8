//! TLS plaintext from uprobes on the OpenSSL linked into the target's own
//! executable (node links OpenSSL statically and exports its symbols).
//!
//! match-proto: OpenSSL `int SSL_write(SSL *s, const void *buf, int num)`,
//!   `int SSL_read(SSL *s, void *buf, int num)` (x86-64 SysV: args in
//!   rdi, rsi, rdx; return in rax).
//!
//! Which connection an `SSL *` belongs to: node's TLS runs over a memory
//! BIO, so the SSL object has no fd. But node drives each TLS connection
//! from one thread, and the ciphertext crosses the socket right before
//! SSL_read and right after SSL_write on that thread. So the first time an
//! `SSL *` is seen, it is bound to the last traced connection that thread
//! read from or wrote to (`LAST_SOCK`); a later ciphertext write following
//! an SSL_write confirms or corrects the binding. Bound sockets are marked
//! TLS so their ciphertext is no longer copied.
//!
//! Cost: each SSL_write is one uprobe hit, each SSL_read two (entry and
//! return) — traps, so this family is the expensive one (docs/architecture.md).

use aya_ebpf::{
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

/// Last traced connection each thread read from or wrote to.
#[map]
pub static LAST_SOCK: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// An SSL_write whose ciphertext has not hit the socket yet, by thread.
#[map]
pub static SSL_WRITE_PENDING: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

/// SSL_read arguments between entry and return, by thread.
#[map]
static SSL_READ_ARGS: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(16384, 0);

/// The connection of `ssl`, binding it on first sight.
#[inline(always)]
fn sock_of(ssl: u64, tid: u32) -> Option<u64> {
    // SAFETY: value copied out immediately.
    if let Some(sk) = unsafe { SSL_SOCK.get(ssl) }.copied() {
        return Some(sk);
    }
    // SAFETY: as above.
    let sk = unsafe { LAST_SOCK.get(tid) }.copied()?;
    bind(ssl, sk);
    Some(sk)
}

#[inline(always)]
pub fn bind(ssl: u64, sk: u64) {
    let _ = SSL_SOCK.insert(ssl, sk, 0);
    let _ = TLS_SOCKS.insert(sk, ssl, 0);
}

/// Connection `sk` closed: forget its TLS binding.
#[inline(always)]
pub fn unbind_sock(sk: u64) {
    // SAFETY: value copied out immediately.
    if let Some(ssl) = unsafe { TLS_SOCKS.get(sk) }.copied() {
        // Only if the SSL * still points here (it may be bound anew).
        // SAFETY: as above.
        if unsafe { SSL_SOCK.get(ssl) }.copied() == Some(sk) {
            let _ = SSL_SOCK.remove(ssl);
        }
        let _ = TLS_SOCKS.remove(sk);
    }
}

#[inline(always)]
fn emit(stream: Stream, sk: u64, buf: u64, len: u64) {
    let args = WriteArgs::new(0, stream, sk, buf);
    emit_buffer(&args, buf, len);
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    let (Some(ssl), Some(buf), Some(num)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<i32>(2))
    else {
        return 0;
    };
    let _ = SSL_WRITE_PENDING.insert(tid, ssl, 0);
    if num > 0
        && let Some(sk) = sock_of(ssl, tid)
    {
        emit(Stream::TlsSent, sk, buf, num as u64);
    }
    0
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    let (_, tid) = current_ids();
    if let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
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
        && let Some(sk) = sock_of(ssl, tid)
    {
        emit(Stream::TlsReceived, sk, buf, ret as u64);
    }
    0
}
