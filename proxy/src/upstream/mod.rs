//! Everything about reaching an upstream: where it is (`resolve`), opening a connection
//! (`connect`) and reusing connections (`pool`).

pub mod balance;
pub mod connect;
pub mod pool;
pub mod resolve;
