//! HTTP proxying: serving downstream connections (`server`), the stage chain every request
//! runs (`stack`), one try upstream (`attempt`), header rules (`headers`), response bodies
//! (`body`), upgrade tunnels (`upgrade`) and the proxy's own answers (`respond`).

pub mod attempt;
pub mod body;
pub mod fallback;
pub mod half_close;
pub mod headers;
pub mod resets;
pub mod respond;
pub mod server;
pub mod stack;
pub mod upgrade;
