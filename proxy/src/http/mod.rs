//! HTTP proxying: serving downstream connections (`server`), the request path (`forward`),
//! header rules (`headers`), bodies (`body`) and the proxy's own answers (`respond`).

pub mod body;
pub mod forward;
pub mod headers;
pub mod replay;
pub mod respond;
pub mod server;
