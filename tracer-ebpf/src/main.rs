//! tracer's probes. One module per probe family; the wire format they write
//! lives in `tracer-common`.
#![no_std]
#![no_main]

mod emit;
mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // An infinite loop makes the verifier reject any program with a reachable
    // panic, so panics are caught at load time rather than silently ignored.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
