//! One module per probe family.
pub mod logs;
pub mod process;
pub mod runtime;
pub mod skb;
pub mod tcp;
pub mod tls;
pub mod usdt;
